"""Settings of the ledger service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from tickertap.ledger.domain import FeeSchedule, TradePolicy
from tickertap.runtime import ServiceSettings


class LedgerSettings(ServiceSettings):
    http_port: int = Field(default=25402, ge=1, le=65535)
    db_schema: str = "ledger"
    vault_role: str = "ledger"

    # access tokens: verified against the auth service's published keys
    auth_jwks_url: str | None = None
    auth_jwks_file: Path | None = None  # a JWKS document on disk (the local stack's dev keys)
    auth_issuer: str
    auth_audience: str = "tickertap"
    auth_algorithms: tuple[str, ...] = ("Ed25519", "EdDSA", "ES256")

    transfer_batch_max: int = Field(default=64, ge=1, le=1000)
    # batches in flight at once. One: a batch takes two round trips, and what arrives
    # meanwhile makes the next one; a second in flight shares accounts with it the more
    # often (then locks) and cost more than it gave (tests/bench/ledger_bench.py)
    transfer_batch_workers: int = Field(default=1, ge=1, le=16)
    transfer_queue_max: int = Field(default=10_000, ge=1)
    # a batch is posted by one statement on balances read just before (two round trips),
    # and under row locks only when a balance changed in between; false: always locked
    transfer_optimistic: bool = True
    # accounts whose balance each process remembers from its last read or write: a batch
    # on remembered balances skips the read (one round trip); 0: every batch reads
    transfer_remembered_max: int = Field(default=100_000, ge=0)

    # reconciliation (reconcile.py): the periodic job's interval (0: off); transfers younger
    # than the window must have their outbox event (the relay purges sent rows after 7 days)
    reconcile_interval_s: float = Field(default=300.0, ge=0)
    reconcile_outbox_window_s: float = Field(default=6 * 86_400 + 82_800, gt=0, le=7 * 86_400)
    reconcile_items_max: int = Field(default=100, ge=1, le=10_000)
    reconcile_statement_timeout_ms: int = Field(default=120_000, ge=100)

    # trades: fees in basis points of the notional, minimum and maximum in the trade's
    # currency (its units: 1 is 1 USD for a USD trade, 1 JPY for a JPY one)
    trade_fee_bps: Decimal = Field(default=Decimal(5), ge=0, le=10_000)
    trade_fee_minimum: Decimal = Field(default=Decimal(0), ge=0, le=10**9)
    trade_fee_maximum: Decimal | None = Field(default=None, ge=0, le=10**9)
    # a market price older than this (from its exchange time) is no price: 409 no_price
    trade_price_age_s_max: float = Field(default=60.0, gt=0, le=7 * 86_400)
    # crypto assets trade in this currency when set; without it they are not tradable
    trade_crypto_quote_currency: (
        Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9.]{0,11}$")] | None
    ) = None
    # price events whose exchange time is further ahead of the ledger's clock are dead-lettered
    price_exchange_ts_skew_s_max: float = Field(default=30.0, ge=0, le=3600)
    price_consumer_batch_max: int = Field(default=500, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if (self.auth_jwks_url is None) == (self.auth_jwks_file is None):
            raise ValueError("set exactly one of TICKERTAP_AUTH_JWKS_URL or _FILE")
        return self

    @model_validator(mode="after")
    def _fee_bounds(self) -> Self:
        if self.trade_fee_maximum is not None and self.trade_fee_maximum < self.trade_fee_minimum:
            raise ValueError("trade_fee_maximum must not be below trade_fee_minimum")
        return self

    def trade_policy(self) -> TradePolicy:
        return TradePolicy(
            fees=FeeSchedule(self.trade_fee_bps, self.trade_fee_minimum, self.trade_fee_maximum),
            price_age_s_max=self.trade_price_age_s_max,
            crypto_quote_currency=self.trade_crypto_quote_currency,
        )

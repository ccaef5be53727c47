"""The ledger's HTTP bodies. Amounts travel as strings; the asset's scale is checked after."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tickertap.ledger import domain as d
from tickertap.ledger import repository as repo

LEGS_BOUND = 1000  # the body bound; the ledger's own limit (too_many_legs) is lower
METADATA_ENTRIES_MAX = 16
SCALE_QUANTA_MAX = 38  # scales whose quantum `_fmt` keeps ready (assets have at most 18)

# a plain decimal number: no exponent, no sign other than '-', at most 38 digits
DecimalText = Annotated[
    str,
    StringConstraints(pattern=r"^-?[0-9]{1,38}(\.[0-9]{1,38})?$", max_length=80),
]
AssetCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9.]{0,11}$")]
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)],
        Annotated[str, StringConstraints(max_length=256)],
    ],
    Field(max_length=METADATA_ENTRIES_MAX),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AssetCreate(Strict):
    code: AssetCode
    scale: int = Field(ge=0, le=18)
    kind: Literal["fiat", "crypto", "share"]
    quote_currency: AssetCode | None = None


class AssetPublic(Strict):
    code: str
    scale: int
    kind: str
    quote_currency: str | None

    @classmethod
    def of(cls, row: repo.AssetRow) -> AssetPublic:
        return cls(
            code=row.asset.code,
            scale=row.asset.scale,
            kind=row.asset.kind.value,
            quote_currency=row.quote_currency,
        )


class AccountCreate(Strict):
    asset: AssetCode
    owner_id: uuid.UUID | None = None  # defaults to the caller; others need the ops role
    overdraft_limit: DecimalText = "0"


class AccountPublic(Strict):
    id: uuid.UUID
    owner_id: uuid.UUID | None
    asset: str
    kind: str
    overdraft_limit: str
    balance: str
    created_at: datetime

    @classmethod
    def of(cls, row: repo.AccountRow, scale: int) -> AccountPublic:
        return cls(
            id=row.account.id,
            owner_id=row.account.owner_id,
            asset=row.account.asset,
            kind=row.account.kind.value,
            overdraft_limit=_fmt(row.account.overdraft_limit, scale),
            balance=_fmt(row.balance, scale),
            created_at=row.created_at,
        )


class AccountList(Strict):
    items: list[AccountPublic]
    # pass it back as `cursor` for the next page; null on the last one
    next_cursor: str | None = None


class OwnerPage(Strict):
    items: list[uuid.UUID]
    next_cursor: str | None


class LegIn(Strict):
    account_id: uuid.UUID
    amount: DecimalText


class TransferCreate(Strict):
    transfer_id: uuid.UUID
    legs: list[LegIn] = Field(max_length=LEGS_BOUND)
    metadata: Metadata = Field(default_factory=dict)


class CashMovement(Strict):
    """A deposit into, or a withdrawal from, a customer's account."""

    transfer_id: uuid.UUID
    account_id: uuid.UUID
    amount: DecimalText
    metadata: Metadata = Field(default_factory=dict)


class TradeCreate(Strict):
    """Buy or sell `quantity` of `symbol` for `owner_id` (default: the caller).

    `price` is an execution price (operations only); without it the trade is at the
    latest market price the ledger has seen, if it is fresh enough (else 409 no_price).
    """

    trade_id: uuid.UUID  # becomes the transfer's id
    owner_id: uuid.UUID | None = None
    symbol: AssetCode
    side: Literal["buy", "sell"]
    quantity: DecimalText
    price: DecimalText | None = None
    metadata: Metadata = Field(default_factory=dict)


class ReversalCreate(Strict):
    reversal_id: uuid.UUID
    metadata: Metadata = Field(default_factory=dict)


class LegPublic(Strict):
    account_id: uuid.UUID
    asset: str
    amount: str
    balance_after: str


class TradePublic(Strict):
    symbol: str
    side: str
    quantity: str
    price: str
    notional: str
    fee: str
    currency: str


class TransferPublic(Strict):
    id: uuid.UUID
    kind: str
    legs: list[LegPublic]
    metadata: dict[str, str]
    trade: TradePublic | None
    reverses: uuid.UUID | None
    created_at: datetime

    @classmethod
    def of(
        cls, transfer: d.Transfer, created_at: datetime, scales: dict[str, int]
    ) -> TransferPublic:
        t = transfer.trade
        return cls(
            id=transfer.id,
            kind=transfer.kind.value,
            legs=[
                LegPublic(
                    account_id=p.account_id,
                    asset=p.asset,
                    amount=_fmt(p.amount, scales[p.asset]),
                    balance_after=_fmt(p.balance_after, scales[p.asset]),
                )
                for p in transfer.postings
            ],
            metadata=dict(transfer.metadata),
            trade=None
            if t is None
            else TradePublic(
                symbol=t.symbol,
                side=t.side.value,
                quantity=_fmt(t.quantity, scales[t.symbol]),
                price=f"{d.plain(t.price):f}",
                notional=_fmt(t.notional, scales[t.currency]),
                fee=_fmt(t.fee, scales[t.currency]),
                currency=t.currency,
            ),
            reverses=transfer.reverses,
            created_at=created_at,
        )


def transfer_body(
    transfer: d.Transfer, created_at: datetime, scales: dict[str, int]
) -> dict[str, Any]:
    """`TransferPublic.of(...)` as the plain data its JSON holds, in the same field order,
    for the hot routes to serialize with `pydantic_core.to_json`: the same bytes as
    `model_dump_json`, without building and validating four models per transfer (a test
    holds the two equal)."""
    t = transfer.trade
    return {
        "id": transfer.id,
        "kind": transfer.kind.value,
        "legs": [
            {
                "account_id": p.account_id,
                "asset": p.asset,
                "amount": _fmt(p.amount, scales[p.asset]),
                "balance_after": _fmt(p.balance_after, scales[p.asset]),
            }
            for p in transfer.postings
        ],
        "metadata": dict(transfer.metadata),
        "trade": None
        if t is None
        else {
            "symbol": t.symbol,
            "side": t.side.value,
            "quantity": _fmt(t.quantity, scales[t.symbol]),
            "price": f"{d.plain(t.price):f}",
            "notional": _fmt(t.notional, scales[t.currency]),
            "fee": _fmt(t.fee, scales[t.currency]),
            "currency": t.currency,
        },
        "reverses": transfer.reverses,
        "created_at": created_at,
    }


def batch_item_body(
    index: int,
    status: int,
    transfer: dict[str, Any] | None = None,
    code: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """A `BatchItemResult` as plain data (see `transfer_body`)."""
    return {"index": index, "status": status, "transfer": transfer, "code": code, "detail": detail}


class BatchItemResult(Strict):
    index: int
    status: int
    transfer: TransferPublic | None = None
    code: str | None = None
    detail: str | None = None


class BatchCreate(Strict):
    transfers: list[TransferCreate] = Field(min_length=1, max_length=1000)


class BatchResult(Strict):
    results: list[BatchItemResult]


class BalancePublic(Strict):
    account_id: uuid.UUID
    asset: str
    balance: str
    as_of: datetime | None


class PostingPublic(Strict):
    id: int
    transfer_id: uuid.UUID
    amount: str
    balance_after: str
    posted_at: datetime


class PostingPage(Strict):
    items: list[PostingPublic]
    next_cursor: str | None


# the quantum of each scale, made once: `_fmt` runs for every amount of every response
_QUANTA = {scale: Decimal(1).scaleb(-scale) for scale in range(SCALE_QUANTA_MAX + 1)}


def _fmt(value: object, scale: int) -> str:
    assert isinstance(value, Decimal)
    quantum = _QUANTA.get(scale) or Decimal(1).scaleb(-scale)
    return f"{value.quantize(quantum):f}"

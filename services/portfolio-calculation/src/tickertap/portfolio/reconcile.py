"""Reconciliation: every portfolio's balances equal its owner's ledger balances.

    RECONCILE_LEDGER_TOKEN=<ops token> \\
    python -m tickertap.portfolio.reconcile --ledger-url http://127.0.0.1:25402
    deploy/local/stack.py exec portfolio-calculation -- python -m tickertap.portfolio.reconcile \\
        --ledger-url http://127.0.0.1:26402 --token-file token.txt

The portfolio service never reads the ledger's schema; this check asks the ledger's
HTTP API (`GET /v1/accounts?owner=`, a token with the `ops`, `support` or `admin`
role) for each portfolio the service knows, and compares every asset's balance
(cash and instruments; an asset missing on one side counts as zero). It also checks
each position's quantity (its open lots) against the balance of its symbol. Events
in flight make a fresh transfer look like drift for a moment: a portfolio that
differs is read again after `--settle-s` and only a difference that stays is drift.

Prints a JSON report; exit 0: no drift; 1: drift (each portfolio named, at most
`--items-max`, with the assets that differ); 2: could not reconcile. Every drifting
portfolio is also a log line. The token is read from RECONCILE_LEDGER_TOKEN (not a
TICKERTAP_ variable: `stack.py exec` passes those through from the stack only) or
`--token-file`, and never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.money import install_context
from tickertap.observability import configure_logging
from tickertap.portfolio import repository as repo
from tickertap.portfolio.ops import service_engine
from tickertap.portfolio.settings import PortfolioSettings

log = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2
TOKEN_ENV = "RECONCILE_LEDGER_TOKEN"  # noqa: S105 - a variable name, not a token
ACCOUNTS_PAGE_MAX = 200  # the ledger's bound on GET /v1/accounts
HTTP_TIMEOUT_S = 10.0
SETTLE_S_DEFAULT = 2.0
ITEMS_MAX_DEFAULT = 100
ITEMS_MAX_MAX = 10_000
ZERO = Decimal(0)


class LedgerUnavailable(Exception):
    """The ledger's API did not answer as expected (status, body)."""


@dataclass
class Report:
    portfolios: int = 0
    drifting: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"portfolios": self.portfolios, "drifting": self.drifting, "items": self.items}


async def ledger_balances(client: httpx.AsyncClient, owner_id: uuid.UUID) -> dict[str, Decimal]:
    r = await client.get(
        "/v1/accounts", params={"owner": str(owner_id), "limit": ACCOUNTS_PAGE_MAX}
    )
    if r.status_code != 200:
        raise LedgerUnavailable(f"GET /v1/accounts answered {r.status_code}")
    items = r.json()["items"]
    if len(items) >= ACCOUNTS_PAGE_MAX:
        raise LedgerUnavailable(f"owner {owner_id} has {ACCOUNTS_PAGE_MAX} accounts or more")
    balances: dict[str, Decimal] = {}
    for a in items:
        balances[a["asset"]] = balances.get(a["asset"], ZERO) + Decimal(a["balance"])
    return balances


def differences(
    ours: Mapping[str, Decimal], theirs: Mapping[str, Decimal]
) -> dict[str, dict[str, str]]:
    """Assets whose balances differ: {asset: {"portfolio": ..., "ledger": ...}}."""
    return {
        asset: {"portfolio": str(ours.get(asset, ZERO)), "ledger": str(theirs.get(asset, ZERO))}
        for asset in sorted(set(ours) | set(theirs))
        if ours.get(asset, ZERO) != theirs.get(asset, ZERO)
    }


async def portfolio_view(
    engine: AsyncEngine, owner_id: uuid.UUID
) -> tuple[dict[str, Decimal], dict[str, dict[str, str]]]:
    """The portfolio's balances, and positions whose quantity is not their symbol's balance."""
    async with engine.begin() as conn:
        await repo.see_all(conn)
        balances = await repo.balances(conn, owner_id)
        positions = await repo.positions(conn, owner_id)
    inconsistent = {
        p.symbol: {"lots": str(p.quantity), "balance": str(balances.get(p.symbol, ZERO))}
        for p in positions
        if p.quantity != balances.get(p.symbol, ZERO)
    }
    return balances, inconsistent


async def reconcile(
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    *,
    settle_s: float,
    items_max: int,
    only: list[uuid.UUID] | None = None,
) -> Report:
    """See the module docstring; `only`: these portfolios instead of every one."""
    if only:
        owners = sorted(set(only))
    else:
        async with engine.begin() as conn:
            await repo.see_all(conn)
            owners = await repo.owners(conn)
    report = Report(portfolios=len(owners))
    suspects = []
    for owner_id in owners:
        ours, inconsistent = await portfolio_view(engine, owner_id)
        if inconsistent or differences(ours, await ledger_balances(client, owner_id)):
            suspects.append(owner_id)
    if suspects:
        await asyncio.sleep(settle_s)
    for owner_id in suspects:
        ours, inconsistent = await portfolio_view(engine, owner_id)
        diff = differences(ours, await ledger_balances(client, owner_id))
        if not (diff or inconsistent):
            continue
        report.drifting += 1
        log.warning(
            "portfolio drifts from the ledger",
            extra={
                "portfolio_id": str(owner_id),
                "assets": sorted(diff),
                "positions": sorted(inconsistent),
            },
        )
        if len(report.items) < items_max:
            item: dict[str, Any] = {"portfolio_id": str(owner_id), "balances": diff}
            if inconsistent:
                item["positions"] = inconsistent
            report.items.append(item)
    return report


async def reconcile_with_vault(
    settings: PortfolioSettings,
    ledger_url: str,
    token: str,
    *,
    settle_s: float,
    items_max: int,
    only: list[uuid.UUID] | None = None,
) -> Report:
    """Log in as the service does (see `ops.service_engine`) and reconcile."""
    async with (
        service_engine(settings, "portfolio-reconcile", read_only=True) as engine,
        httpx.AsyncClient(
            base_url=ledger_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=HTTP_TIMEOUT_S,
            follow_redirects=False,
        ) as client,
    ):
        return await reconcile(engine, client, settle_s=settle_s, items_max=items_max, only=only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tickertap.portfolio.reconcile",
        description=(
            "Compare every portfolio's balances with the ledger's (its HTTP API). "
            "Exit 0: no drift; 1: drift; 2: could not reconcile."
        ),
    )
    parser.add_argument("--ledger-url", required=True, help="the ledger's base URL")
    parser.add_argument("--token-file", type=Path, help=f"an ops token (else ${TOKEN_ENV})")
    parser.add_argument("--settle-s", type=float, default=SETTLE_S_DEFAULT)
    parser.add_argument("--items-max", type=int, default=ITEMS_MAX_DEFAULT)
    parser.add_argument(
        "--portfolio", type=uuid.UUID, action="append", help="check only this one (repeatable)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.items_max <= ITEMS_MAX_MAX:
        parser.error(f"--items-max must be in [1, {ITEMS_MAX_MAX}]")
    if not 0 <= args.settle_s <= 60:
        parser.error("--settle-s must be in [0, 60]")
    token = (
        args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV, "")
    )
    if not token:
        parser.error(f"give an ops token: --token-file or ${TOKEN_ENV}")
    install_context()
    try:
        settings = PortfolioSettings()  # type: ignore[call-arg]  # from the environment
    except Exception as exc:  # pydantic's ValidationError names the missing variables
        print(f"reconcile: bad settings: {exc}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging("portfolio-reconcile", settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        report = asyncio.run(
            reconcile_with_vault(
                settings,
                args.ledger_url,
                token,
                settle_s=args.settle_s,
                items_max=args.items_max,
                only=args.portfolio,
            )
        )
    except Exception as exc:
        log.error("reconciliation failed", extra={"error": type(exc).__name__})
        print(f"reconcile: could not reconcile: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report.to_json(), indent=2))
    return EXIT_CLEAN if report.drifting == 0 else EXIT_DRIFT


if __name__ == "__main__":
    sys.exit(main())

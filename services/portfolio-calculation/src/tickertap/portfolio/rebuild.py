"""Rebuild: recompute every portfolio from its stored transfer history, compare with the live state.

    python -m tickertap.portfolio.rebuild             # check only: JSON report on stdout
    python -m tickertap.portfolio.rebuild --repair    # and rewrite the portfolios that differ
    deploy/local/stack.py exec portfolio-calculation -- python -m tickertap.portfolio.rebuild

The live state (balances, positions, lots, realized entries, counts) is what the
consumer saved after each event; the rebuild runs `domain.compute` over the whole
stored history (`portfolio.transfers`) of each portfolio and must find exactly the
same rows. Each portfolio is compared under its row lock, so a transfer being
applied at the same moment is never half seen. Exit 0: identical; 1: a portfolio
differs (named in the report, at most `--items-max`; with `--repair` too, though it
is then rewritten: a second run exits 0); 2: could not check.

A repaired portfolio is marked for a portfolio.updates.v1 event, like any change.
The history itself comes from ledger.transfers.v1; a broker that lost its topics
(the local Tansu after a restart) loses nothing here, since state rebuilds from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.money import install_context
from tickertap.observability import configure_logging
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime.login import command_engine

log = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_DIFFERS, EXIT_ERROR = 0, 1, 2
ITEMS_MAX_DEFAULT = 100
ITEMS_MAX_MAX = 10_000


@dataclass
class Report:
    portfolios: int = 0
    differing: int = 0
    repaired: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "portfolios": self.portfolios,
            "differing": self.differing,
            "repaired": self.repaired,
            "items": self.items,
        }


async def rebuild(engine: AsyncEngine, scales: d.Scales, *, repair: bool, items_max: int) -> Report:
    """Compare (and with `repair`, rewrite) every portfolio; see the module docstring."""
    report = Report()
    async with engine.begin() as conn:
        await repo.see_all(conn)
        owners = await repo.owners(conn)
    for owner_id in owners:
        async with engine.begin() as conn:
            await repo.see_all(conn)
            await repo.lock_portfolio(conn, owner_id)
            holdings = d.compute(await repo.history(conn, owner_id), scales)
            expected = repo.rows_of(holdings)
            stored = await repo.stored_rows(conn, owner_id)
            row = await repo.portfolio(conn, owner_id)
            assert row is not None  # locked above
            expected["portfolio"] = [(holdings.transfers_applied, holdings.last_transfer_at)]
            stored["portfolio"] = [(row.transfers_applied, row.last_transfer_at)]
            tables = sorted(t for t in expected if expected[t] != stored[t])
            report.portfolios += 1
            if not tables:
                continue
            report.differing += 1
            if len(report.items) < items_max:
                report.items.append({"portfolio_id": str(owner_id), "differs_in": tables})
            log.warning("portfolio differs from its history", extra={"portfolio_id": str(owner_id)})
            if repair:
                await repo.save_holdings(conn, owner_id, holdings)
                await repo.notify_changes(conn, owners=[owner_id])
                report.repaired += 1
    return report


async def rebuild_with_vault(
    settings: PortfolioSettings, *, repair: bool, items_max: int
) -> Report:
    """Log in as the service does and rebuild (`tickertap.runtime.login.command_engine`)."""
    async with command_engine(settings, "portfolio-rebuild") as engine:
        return await rebuild(engine, settings.scales(), repair=repair, items_max=items_max)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tickertap.portfolio.rebuild",
        description=(
            "Recompute every portfolio from its stored transfers and compare with the live "
            "state (settings from TICKERTAP_* like the service). Exit 0: identical; "
            "1: differences; 2: could not check."
        ),
    )
    parser.add_argument("--repair", action="store_true", help="rewrite what differs")
    parser.add_argument(
        "--items-max", type=int, default=ITEMS_MAX_DEFAULT, help="portfolios listed (1 to 10000)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.items_max <= ITEMS_MAX_MAX:
        parser.error(f"--items-max must be in [1, {ITEMS_MAX_MAX}]")
    install_context()
    try:
        settings = PortfolioSettings()  # type: ignore[call-arg]  # from the environment
    except Exception as exc:  # pydantic's ValidationError names the missing variables
        print(f"rebuild: bad settings: {exc}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging("portfolio-rebuild", settings.log_level)
    try:
        report = asyncio.run(
            rebuild_with_vault(settings, repair=args.repair, items_max=args.items_max)
        )
    except Exception as exc:
        log.error("rebuild failed", extra={"error": type(exc).__name__}, exc_info=True)
        print(f"rebuild: could not check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report.to_json(), indent=2))
    return EXIT_CLEAN if report.differing == 0 else EXIT_DIFFERS


if __name__ == "__main__":
    sys.exit(main())

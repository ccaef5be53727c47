"""Store today's valuation of every portfolio now (what the service does every
TICKERTAP_VALUATION_SNAPSHOT_INTERVAL_S): for a scheduler at the end of a UTC day, or by hand.

    deploy/local/stack.py exec portfolio-calculation -- python -m tickertap.portfolio.valuations

Prints {"portfolios": N, "day": "YYYY-MM-DD"}; exit 0, or 2 when it could not store them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime

from tickertap.money import install_context
from tickertap.observability import configure_logging
from tickertap.portfolio import handlers
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime.login import command_engine

log = logging.getLogger(__name__)


async def snapshot_now(settings: PortfolioSettings) -> int:
    async with command_engine(settings, "portfolio-valuations") as engine:
        return await handlers.snapshot_valuations(
            engine,
            settings.base_currency,
            settings.scales(),
            batch_max=settings.valuation_batch_max,
        )


def main() -> int:
    install_context()
    try:
        settings = PortfolioSettings()  # type: ignore[call-arg]  # from the environment
    except Exception as exc:  # pydantic's ValidationError names the missing variables
        print(f"valuations: bad settings: {exc}", file=sys.stderr)
        return 2
    configure_logging("portfolio-valuations", settings.log_level)
    try:
        stored = asyncio.run(snapshot_now(settings))
    except Exception as exc:
        log.error("valuation snapshot failed", extra={"error": type(exc).__name__})
        print(f"valuations: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"portfolios": stored, "day": datetime.now(UTC).date().isoformat()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reconciliation job's pure parts: when rounds happen, what counts as a difference."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tickertap.portfolio.reconcile import differences
from tickertap.portfolio.reconcile_job import seconds_to_next_round


@pytest.mark.parametrize(
    ("now_s", "wait_s"),
    [(600.0, 300.0), (601.5, 298.5), (899.0, 1.0), (0.0, 300.0)],
)
def test_rounds_are_aligned_to_the_wall_clock(now_s: float, wait_s: float) -> None:
    """Replicas wake at the same multiples of the interval, so one takes the lock and
    the others skip, instead of each running once per interval at its own phase."""
    assert seconds_to_next_round(300.0, now_s) == pytest.approx(wait_s)


def test_a_missing_asset_counts_as_zero_on_either_side() -> None:
    ours = {"USD": Decimal("10.00"), "AAPL": Decimal(0)}
    theirs = {"USD": Decimal("10"), "EUR": Decimal("0.00"), "BTC": Decimal("0.5")}
    assert differences(ours, theirs) == {"BTC": {"portfolio": "0", "ledger": "0.5"}}
    assert differences({}, {}) == {}

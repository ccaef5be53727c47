"""The report a job computes and the request body it starts from, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from tickertap.portfolio import domain as d
from tickertap.portfolio import jobs
from tickertap.portfolio.api import InvalidRange
from tickertap.portfolio.jobs_api import ReportCreate

D = Decimal
T0 = datetime(2025, 12, 31, 23, 59, 57, tzinfo=UTC)
SYMBOL = "ACME"


def trade(step: int, side: str, quantity: str, price: str, fee: str) -> d.PortfolioTransfer:
    q, p, f = D(quantity), D(price), D(fee)
    notional = (q * p).quantize(D("0.01"))
    sign = 1 if side == "buy" else -1
    return d.PortfolioTransfer(
        uuid.uuid4(),
        T0 + timedelta(seconds=step),
        "trade",
        {"USD": -sign * notional - f, SYMBOL: sign * q},
        d.Trade(SYMBOL, d.Side(side), q, p, notional, f, "USD"),
    )


HISTORY = [
    trade(0, "buy", "10", "100.00", "1.00"),
    trade(1, "buy", "10", "120.00", "1.00"),
    trade(2, "sell", "5", "130.00", "0.50"),  # 2025-12-31
    trade(3, "sell", "8", "110.00", "0.40"),  # 2026-01-01
    trade(4, "sell", "2", "140.00", "0.20"),
]


@pytest.mark.parametrize(
    ("method", "year", "total", "pnls"),
    [
        ("fifo", 2025, "149.00", ["149.00"]),
        ("fifo", 2026, "58.40", ["18.80", "39.60"]),
        ("average", 2025, "99.00", ["99.00"]),
        ("average", 2026, "58.40", ["-1.20", "59.60"]),
    ],
)
def test_realized_report_matches_the_hand_computed_table(
    method: str, year: int, total: str, pnls: list[str]
) -> None:
    request = jobs.ReportRequest(
        jobs.ReportKind.REALIZED_PNL, d.Method(method), date(year, 1, 1), date(year, 12, 31)
    )
    owner = uuid.uuid4()
    report = jobs.realized_report(owner, request, HISTORY, d.Scales({}, 2), entries_max=1000)
    assert report["total"] == {"USD": total}
    assert [e["pnl"] for e in report["entries"]] == pnls
    assert report["by_symbol"][0]["pnl"] == total
    assert (report["sales"], report["entries_truncated"]) == (len(pnls), False)
    assert report["portfolio_id"] == str(owner)
    assert all(e["lots"] for e in report["entries"])


def test_entries_are_bounded_but_the_totals_cover_every_sale() -> None:
    request = jobs.ReportRequest(
        jobs.ReportKind.REALIZED_PNL, d.Method.FIFO, date(2025, 1, 1), date(2026, 12, 31)
    )
    report = jobs.realized_report(uuid.uuid4(), request, HISTORY, d.Scales({}, 2), entries_max=1)
    assert (len(report["entries"]), report["entries_truncated"], report["sales"]) == (1, True, 3)
    assert report["total"] == {"USD": "207.40"}


def test_the_idempotency_hash_covers_portfolio_and_request() -> None:
    owner = uuid.uuid4()
    a = jobs.ReportRequest(
        jobs.ReportKind.REALIZED_PNL, d.Method.FIFO, date(2026, 1, 1), date(2026, 12, 31)
    )
    b = jobs.ReportRequest(
        jobs.ReportKind.REALIZED_PNL, d.Method.AVERAGE, date(2026, 1, 1), date(2026, 12, 31)
    )
    assert jobs.request_hash(owner, a) == jobs.request_hash(owner, a)
    assert jobs.request_hash(owner, a) != jobs.request_hash(owner, b)
    assert jobs.request_hash(owner, a) != jobs.request_hash(uuid.uuid4(), a)
    assert jobs.ReportRequest.of("realized_pnl", a.params()) == a


def test_a_year_is_its_utc_days() -> None:
    r = ReportCreate.model_validate({"kind": "realized_pnl", "year": 2026}).request()
    assert (r.method, r.start, r.end) == (d.Method.FIFO, date(2026, 1, 1), date(2026, 12, 31))
    r = ReportCreate.model_validate(
        {"kind": "realized_pnl", "from": "2026-02-01", "to": "2026-02-28", "method": "average"}
    ).request()
    assert (r.method, r.start, r.end) == (d.Method.AVERAGE, date(2026, 2, 1), date(2026, 2, 28))


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "realized_pnl"},
        {"kind": "realized_pnl", "year": 2026, "to": "2026-02-01"},
        {"kind": "realized_pnl", "from": "2026-02-29", "to": "2026-03-01"},
        {"kind": "realized_pnl", "year": True},
    ],
)
def test_bad_periods_are_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ReportCreate.model_validate(body)


def test_from_after_to_is_an_invalid_range() -> None:
    body = ReportCreate.model_validate(
        {"kind": "realized_pnl", "from": "2026-03-02", "to": "2026-03-01"}
    )
    with pytest.raises(InvalidRange):
        body.request()

"""How the API shows numbers and checks day ranges, without I/O."""

from __future__ import annotations

from datetime import date

import pytest

from tickertap.portfolio import api


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, date.max),  # its end (the next midnight) is not a datetime: was a 500
        (date.max, None),
        (date.max, date.max),
    ],
)
def test_days_whose_end_overflows_are_an_invalid_range(
    start: date | None, end: date | None
) -> None:
    with pytest.raises(api.InvalidRange):
        api.check_range(start, end)


def test_the_extreme_representable_days_are_accepted() -> None:
    api.check_range(date.min, api.DAY_MAX)
    assert date(9999, 12, 30) == api.DAY_MAX

import decimal
import threading
from collections.abc import Iterator
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    Clamped,
    Decimal,
    DivisionByZero,
    FloatOperation,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Subnormal,
    Underflow,
    localcontext,
)

import pytest

from tickertap.money import (
    CONTEXT,
    DIGITS_MAX,
    USD,
    Money,
    install_context,
    money_context,
    parse_amount,
    round_to_scale,
)

TRAPPED = {InvalidOperation, DivisionByZero, Overflow}
NOT_TRAPPED = {Inexact, Rounded, Clamped, Subnormal, Underflow, FloatOperation}


def test_context_is_38_digits_half_even_with_three_traps() -> None:
    assert CONTEXT.prec == DIGITS_MAX == 38
    assert CONTEXT.rounding == ROUND_HALF_EVEN
    assert {signal for signal in TRAPPED | NOT_TRAPPED if CONTEXT.traps[signal]} == TRAPPED


def test_money_context_is_a_fresh_copy_each_time() -> None:
    first = money_context()
    first.prec = 5
    assert money_context().prec == 38
    assert CONTEXT.prec == 38


def test_context_traps_invalid_operation_and_division_by_zero() -> None:
    with localcontext(money_context()), pytest.raises(DivisionByZero):
        Decimal(1) / Decimal(0)
    with localcontext(money_context()), pytest.raises(InvalidOperation):
        Decimal("abc")


def test_context_rounds_half_even_without_raising() -> None:
    with localcontext(money_context()):
        assert Decimal(2) / Decimal(3) == Decimal("0." + "6" * 37 + "7")
        assert +Decimal("1" + "0" * 37 + "5") == Decimal("1" + "0" * 37) * 10


@pytest.fixture
def restored_contexts() -> Iterator[None]:
    default = decimal.DefaultContext
    saved = default.copy()
    with localcontext():
        yield
    for name in ("prec", "rounding", "Emax", "Emin", "capitals", "clamp"):
        setattr(default, name, getattr(saved, name))
    default.clear_traps()
    for signal in TRAPPED | NOT_TRAPPED:
        default.traps[signal] = saved.traps[signal]


@pytest.mark.usefixtures("restored_contexts")
def test_install_context_sets_this_thread_and_new_threads() -> None:
    decimal.getcontext().prec = 7
    install_context()
    assert decimal.getcontext().prec == 38
    assert decimal.getcontext().rounding == ROUND_HALF_EVEN
    seen: list[decimal.Context] = []
    thread = threading.Thread(target=lambda: seen.append(decimal.getcontext().copy()))
    thread.start()
    thread.join()
    assert seen[0].prec == 38
    assert {signal for signal in TRAPPED | NOT_TRAPPED if seen[0].traps[signal]} == TRAPPED


def test_library_ignores_the_callers_context() -> None:
    wide = Decimal("12345678901234567890123456789012.34")
    with localcontext() as caller:
        caller.prec = 3
        caller.rounding = ROUND_DOWN
        caller.traps[InvalidOperation] = False
        total = Money(wide, USD) + Money(wide, USD)
        assert total.amount == Decimal("24691357802469135780246913578024.68")
        assert Money(wide, USD) * 2 == total.amount
        assert round_to_scale(Decimal("0.125"), 2) == Decimal("0.12")
        assert parse_amount(wide, USD) == wide
        assert (-Money(wide, USD)).amount == wide.copy_negate()
        assert Money(wide, USD).minor_units == 1234567890123456789012345678901234
        assert Money.from_minor_units(1234567890123456789012345678901234, USD).amount == wide

"""The project-wide Decimal context, defined here and nowhere else.

38 significant digits (the widest `NUMERIC(38, s)` column), ROUND_HALF_EVEN, and traps
for InvalidOperation, DivisionByZero and Overflow. Inexact is not trapped globally:
server-side calculations may round, but only through `round_to_scale`. The library's
own arithmetic runs in `exact()`, which also traps Inexact, so it never rounds at all.
"""

import decimal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Final

from tickertap.money.errors import OutOfRange

DIGITS_MAX: Final = 38
SCALE_MAX: Final = 18


def money_context() -> Context:
    """A fresh copy of the project-wide context (every field explicit, none inherited)."""
    return Context(
        prec=DIGITS_MAX,
        rounding=ROUND_HALF_EVEN,
        Emax=decimal.MAX_EMAX,
        Emin=decimal.MIN_EMIN,
        capitals=1,
        clamp=0,
        flags=[],
        traps=[InvalidOperation, DivisionByZero, Overflow],
    )


CONTEXT: Final = money_context()
"""The project-wide context. Read it; to change a copy, call `money_context()`."""

_LIBRARY: Final = money_context()  # private, so a caller mutating CONTEXT changes nothing here
_EXACT: Final = money_context()
_EXACT.traps[Inexact] = True


def install_context() -> None:
    """Make the project context current here and the default for threads started later.

    Call once from a composition root (`main.py`) before starting threads: each thread
    has its own context (asyncio tasks copy their creator's), new ones start from the default.
    """
    decimal.setcontext(money_context())
    default = decimal.DefaultContext
    default.prec = DIGITS_MAX
    default.rounding = ROUND_HALF_EVEN
    default.Emax = decimal.MAX_EMAX
    default.Emin = decimal.MIN_EMIN
    default.capitals = 1
    default.clamp = 0
    default.clear_flags()
    default.clear_traps()
    for trap in (InvalidOperation, DivisionByZero, Overflow):
        default.traps[trap] = True


def library_context() -> AbstractContextManager[Context]:
    """`localcontext` with the project context, whatever the caller's current context is."""
    return localcontext(_LIBRARY)


@contextmanager
def exact() -> Iterator[None]:
    """Run arithmetic that must not round: a result beyond DIGITS_MAX raises OutOfRange."""
    with localcontext(_EXACT):
        try:
            yield
        except Inexact:
            raise OutOfRange(f"result needs more than {DIGITS_MAX} significant digits") from None

"""The portfolio rules, pure: standard library and Decimal only, no I/O, no framework.

A portfolio is one customer (the `owner_id` of ledger legs). Its state is a pure
function of the ledger transfers that concern it, `compute(history, scales)`:

- **balances**: every asset's net movement (what the ledger's balances of the
  customer's accounts say); **cash** is the balance of every asset that is not a
  traded instrument.
- **positions**: per traded symbol, the open lots (quantity left, price, fees
  allocated, acquisition time, source transfer), the cost basis by FIFO (the sum
  of the open lots' cost) and by average cost (one pool), and the realized P&L of
  every sale under each method, each entry naming the lots it consumed.

Order and reversals: transfers are applied in (occurred_at, transfer_id) order,
whatever order they arrived in, and a reversal removes its original transfer and
itself from the history before anything is computed: the state is exactly the one
of a history in which the pair never happened (a reversed buy's lot disappears,
cash comes back, and the realized P&L of later sales is recomputed). Recomputing
from the history is the simplest correct approach; `compute` is what the rebuild
command and the consumer (for a late transfer or a reversal) call. A transfer later
than all others is applied on top of the saved state with `apply`, the step of
`compute`, when `appendable` says that gives the same result.

Numbers: every figure is a Decimal; sums and products are exact (a context of 80
digits, far above NUMERIC(38, 18)'s). Rounding happens only where a division
makes a figure inexact, half-even to the scale of the trade's currency (`scales`,
USD 2, JPY 0): the cost of part of a lot (lot cost x taken / lot quantity), the
fees allocated to that part, and the average-cost pool's cost of a sale (pool
cost x sold / pool quantity). The remainder is kept exactly (cost left = cost -
cost taken), so cost taken plus cost left always equals what was paid, and FIFO
and average cost agree on the total P&L (realized + unrealized) to the unit of
the currency's scale. Market value (quantity x price) is rounded to the same
scale; `average_cost` per unit is for display only, at UNIT_COST_PLACES places.

Day change: the position's market value now minus the same quantity valued at the
symbol's previous close (its last price of an earlier UTC day). It holds the
quantity fixed: a position bought today shows the move since yesterday's close,
not since its purchase.

What a transfer does to a position:
- a trade (kind trade, with trade details) of the portfolio's symbol: a buy adds
  a lot costing notional + fee; a sale takes lots first in, first out (the average
  method takes the same quantities, at the pool's average cost) and realizes
  (notional - fee) - cost taken. Quantity sold beyond what is held is reported as
  `uncovered_quantity` with no cost.
- any other movement of a traded symbol (shares transferred in or out): in, a lot
  at zero cost (its cost is unknown to the ledger); out, lots are taken as for a
  sale but nothing is realized.
"""

from __future__ import annotations

import enum
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

ZERO = Decimal(0)
WORK = Context(prec=80, rounding=ROUND_HALF_EVEN)
SCALE_DEFAULT = 2
UNIT_COST_PLACES = 6
SYSTEM_OWNER = uuid.UUID(int=0)  # the ledger's owner id of its own (house) accounts


class Method(enum.StrEnum):
    FIFO = "fifo"
    AVERAGE = "average"


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class InvalidTransfer(ValueError):
    """A transfer event that cannot be applied; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def round_to(value: Decimal, places: int) -> Decimal:
    """Half-even to `places` decimal places: the one rounding of this module."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN, context=WORK)


def at_scale(value: Decimal, places: int) -> Decimal:
    """`value` with `places` decimal places when that loses nothing, else `value` itself:
    for display, never a rounding (a currency missing from the scales takes the default)."""
    padded = round_to(value, places)
    return padded if padded == value else value


@dataclass(frozen=True, slots=True)
class Scales:
    """Decimal places of each currency (fiat 2, JPY 0, ...), for rounding at the edges."""

    places: Mapping[str, int] = field(default_factory=dict)
    default: int = SCALE_DEFAULT

    def of(self, currency: str) -> int:
        return self.places.get(currency, self.default)


# -- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trade:
    """A trade's details as the ledger reports them (in `currency`)."""

    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    notional: Decimal
    fee: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class LedgerLeg:
    owner_id: uuid.UUID
    asset: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class PortfolioTransfer:
    """What one ledger transfer does to one portfolio: its net amount per asset."""

    transfer_id: uuid.UUID
    occurred_at: datetime
    kind: str
    amounts: Mapping[str, Decimal]
    trade: Trade | None = None
    reverses: uuid.UUID | None = None


def split_transfer(
    transfer_id: uuid.UUID,
    occurred_at: datetime,
    kind: str,
    legs: Iterable[LedgerLeg],
    trade: Trade | None,
    reverses: uuid.UUID | None,
) -> dict[uuid.UUID, PortfolioTransfer]:
    """The transfer as seen by each customer it concerns (house accounts are not portfolios)."""
    if occurred_at.tzinfo is None:
        raise InvalidTransfer("invalid_event", "occurred_at has no time zone")
    if (kind == "reversal") != (reverses is not None):
        raise InvalidTransfer("invalid_event", "reverses_transfer_id is set exactly on reversals")
    if kind == "trade" and trade is None:
        raise InvalidTransfer("invalid_event", "a trade without trade details")
    if trade is not None:
        for name in ("quantity", "price", "notional"):
            if getattr(trade, name) <= ZERO:
                raise InvalidTransfer("invalid_trade", f"trade {name} must be positive")
        if trade.fee < ZERO:
            raise InvalidTransfer("invalid_trade", "trade fee must not be negative")
    sums: dict[uuid.UUID, dict[str, Decimal]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    with localcontext(WORK):
        for leg in legs:
            if leg.owner_id != SYSTEM_OWNER:
                sums[leg.owner_id][leg.asset] += leg.amount
    return {
        owner: PortfolioTransfer(
            transfer_id,
            occurred_at,
            kind,
            {asset: amount for asset, amount in sorted(amounts.items()) if amount},
            trade,
            reverses,
        )
        for owner, amounts in sums.items()
    }


# -- state -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Lot:
    """An open lot; `cost` (fees included) and `fees` are what is left of the quantity left."""

    transfer_id: uuid.UUID
    acquired_at: datetime
    quantity_acquired: Decimal
    quantity: Decimal
    price: Decimal
    fees: Decimal
    cost: Decimal


@dataclass(frozen=True, slots=True)
class LotUse:
    """Part of a lot a sale took: which lot (its buy transfer), how much, at what cost."""

    transfer_id: uuid.UUID
    quantity: Decimal
    cost: Decimal


@dataclass(frozen=True, slots=True)
class Realization:
    """The realized P&L of one sale under one method: proceeds (notional - fee) - cost."""

    method: Method
    symbol: str
    currency: str
    sale_transfer_id: uuid.UUID
    occurred_at: datetime
    quantity: Decimal
    proceeds: Decimal
    cost: Decimal
    pnl: Decimal
    lots: tuple[LotUse, ...]
    uncovered_quantity: Decimal = ZERO


@dataclass(slots=True)
class Position:
    symbol: str
    currency: str
    lots: list[Lot] = field(default_factory=list)
    average_cost_pool: Decimal = ZERO  # the average method's cost of the quantity held
    realized: dict[Method, list[Realization]] = field(
        default_factory=lambda: {Method.FIFO: [], Method.AVERAGE: []}
    )
    # realized P&L of entries not in `realized` (a position loaded to append a transfer)
    realized_carried: dict[Method, Decimal] = field(
        default_factory=lambda: {Method.FIFO: ZERO, Method.AVERAGE: ZERO}
    )

    @property
    def quantity(self) -> Decimal:
        with localcontext(WORK):
            return sum((lot.quantity for lot in self.lots), ZERO)

    def cost_basis(self, method: Method) -> Decimal:
        if method is Method.AVERAGE:
            return self.average_cost_pool
        with localcontext(WORK):
            return sum((lot.cost for lot in self.lots), ZERO)

    def realized_pnl(self, method: Method) -> Decimal:
        with localcontext(WORK):
            return self.realized_carried[method] + sum((r.pnl for r in self.realized[method]), ZERO)

    def buy(
        self,
        transfer_id: uuid.UUID,
        at: datetime,
        quantity: Decimal,
        price: Decimal,
        notional: Decimal,
        fee: Decimal,
    ) -> None:
        """A new lot of `quantity` at `price` costing notional + fee."""
        with localcontext(WORK):
            cost = notional + fee
            self.lots.append(Lot(transfer_id, at, quantity, quantity, price, fee, cost))
            self.average_cost_pool += cost

    def take(self, quantity: Decimal, places: int) -> tuple[list[LotUse], Decimal, Decimal]:
        """Remove `quantity` first in, first out: (lots used, FIFO cost, average cost);
        quantity beyond the lots is left out of both (the caller reports it uncovered)."""
        uses: list[LotUse] = []
        with localcontext(WORK):
            held = self.quantity
            if quantity >= held:
                average = self.average_cost_pool
            else:
                average = round_to(self.average_cost_pool * quantity / held, places)
            self.average_cost_pool -= average
            left = quantity
            while left > ZERO and self.lots:
                lot = self.lots[0]
                taken = min(left, lot.quantity)
                if taken == lot.quantity:
                    cost, fees = lot.cost, lot.fees
                    self.lots.pop(0)
                else:
                    cost = round_to(lot.cost * taken / lot.quantity, places)
                    fees = round_to(lot.fees * taken / lot.quantity, places)
                    lot.quantity -= taken
                    lot.cost -= cost
                    lot.fees -= fees
                uses.append(LotUse(lot.transfer_id, taken, cost))
                left -= taken
            fifo = sum((u.cost for u in uses), ZERO)
        return uses, fifo, average

    def sell(self, transfer_id: uuid.UUID, at: datetime, trade: Trade, places: int) -> None:
        uses, fifo, average = self.take(trade.quantity, places)
        with localcontext(WORK):
            proceeds = trade.notional - trade.fee
            covered = sum((u.quantity for u in uses), ZERO)
            uncovered = trade.quantity - covered
            for method, cost in ((Method.FIFO, fifo), (Method.AVERAGE, average)):
                self.realized[method].append(
                    Realization(
                        method,
                        self.symbol,
                        self.currency,
                        transfer_id,
                        at,
                        trade.quantity,
                        proceeds,
                        cost,
                        proceeds - cost,
                        tuple(uses),
                        uncovered,
                    )
                )


@dataclass(slots=True)
class Holdings:
    """A portfolio's state: balances per asset and positions per traded symbol."""

    balances: dict[str, Decimal] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    transfers_applied: int = 0
    last_transfer_at: datetime | None = None

    def cash(self) -> dict[str, Decimal]:
        return {a: v for a, v in sorted(self.balances.items()) if a not in self.positions}

    def realizations(self, method: Method) -> list[Realization]:
        entries = [r for p in self.positions.values() for r in p.realized[method]]
        return sorted(entries, key=lambda r: (r.occurred_at, str(r.sale_transfer_id), r.symbol))


def effective(history: Iterable[PortfolioTransfer]) -> list[PortfolioTransfer]:
    """The transfers that count, in the order they apply: reversals and what they reverse
    removed, the rest by (occurred_at, transfer_id); the same transfer id once."""
    unique = {t.transfer_id: t for t in history}
    reversed_ids = {t.reverses for t in unique.values() if t.reverses is not None}
    kept = [t for t in unique.values() if t.reverses is None and t.transfer_id not in reversed_ids]
    return sorted(kept, key=lambda t: (t.occurred_at, str(t.transfer_id)))


def traded_currencies(transfers: Iterable[PortfolioTransfer]) -> dict[str, str]:
    """The instruments among the assets (symbols traded in the history) and their currency."""
    currency_of: dict[str, str] = {}
    for t in transfers:
        if t.trade is not None and t.trade.symbol in t.amounts:
            currency_of.setdefault(t.trade.symbol, t.trade.currency)
    return currency_of


def apply(
    holdings: Holdings, t: PortfolioTransfer, currency_of: Mapping[str, str], scales: Scales
) -> None:
    """Apply one transfer that counts, after every earlier one (the step of `compute`)."""
    with localcontext(WORK):
        for asset, amount in t.amounts.items():
            balance = holdings.balances.get(asset, ZERO) + amount
            if balance:
                holdings.balances[asset] = balance
            else:
                holdings.balances.pop(asset, None)
        traded = t.trade.symbol if t.trade is not None and t.kind == "trade" else None
        for asset, amount in t.amounts.items():
            if asset not in currency_of:
                continue
            currency = currency_of[asset]
            position = holdings.positions.setdefault(asset, Position(asset, currency))
            places = scales.of(currency)
            if asset == traded and t.trade is not None:
                trade = t.trade
                if trade.side is Side.BUY:
                    position.buy(
                        t.transfer_id,
                        t.occurred_at,
                        trade.quantity,
                        trade.price,
                        trade.notional,
                        trade.fee,
                    )
                else:
                    position.sell(t.transfer_id, t.occurred_at, trade, places)
            elif amount > ZERO:
                position.buy(t.transfer_id, t.occurred_at, amount, ZERO, ZERO, ZERO)
            else:
                position.take(-amount, places)
        holdings.transfers_applied += 1
        holdings.last_transfer_at = t.occurred_at


def compute(history: Iterable[PortfolioTransfer], scales: Scales | None = None) -> Holdings:
    """The portfolio's state from the transfers that concern it (see the module docstring)."""
    scales = scales or Scales()
    transfers = effective(history)
    currency_of = traded_currencies(transfers)
    holdings = Holdings()
    for t in transfers:
        apply(holdings, t, currency_of, scales)
    holdings.balances = dict(sorted(holdings.balances.items()))
    return holdings


def appendable(holdings: Holdings, t: PortfolioTransfer) -> bool:
    """Whether `t`, later than every transfer in `holdings` and reversed by none, can be
    applied on top of them: not a reversal, and not the first trade of an asset the
    portfolio already holds (its earlier movements would become lots: recompute)."""
    if t.reverses is not None or t.kind == "reversal":
        return False
    if t.trade is not None and t.trade.symbol in t.amounts:
        symbol = t.trade.symbol
        if symbol not in holdings.positions and holdings.balances.get(symbol, ZERO):
            return False
    return True


# -- valuation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    """The latest price of a symbol, with where it came from (traceability)."""

    symbol: str
    price: Decimal
    exchange_ts: datetime
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    previous_close: Decimal | None = None  # the last price of an earlier UTC day
    previous_close_ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class PositionFigures:
    """What valuation needs of a position, under both methods (also what the database keeps)."""

    symbol: str
    currency: str
    quantity: Decimal
    cost_fifo: Decimal
    cost_average: Decimal
    realized_fifo: Decimal
    realized_average: Decimal

    @classmethod
    def of(cls, position: Position) -> PositionFigures:
        return cls(
            position.symbol,
            position.currency,
            position.quantity,
            position.cost_basis(Method.FIFO),
            position.cost_basis(Method.AVERAGE),
            position.realized_pnl(Method.FIFO),
            position.realized_pnl(Method.AVERAGE),
        )

    def cost(self, method: Method) -> Decimal:
        return self.cost_fifo if method is Method.FIFO else self.cost_average

    def realized(self, method: Method) -> Decimal:
        return self.realized_fifo if method is Method.FIFO else self.realized_average


@dataclass(frozen=True, slots=True)
class PositionValue:
    symbol: str
    currency: str
    quantity: Decimal
    cost_basis: Decimal
    average_cost: Decimal
    realized_pnl: Decimal
    quote: Quote | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    day_change: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Valuation:
    """A portfolio valued at the latest prices under one cost-basis method.

    Totals are in `base_currency` and count only positions and cash in it: there
    is no exchange-rate source yet, so other currencies are listed, not converted.
    A position without a price counts at its cost basis in market_value and zero
    in unrealized_pnl; one without a previous close zero in day_change.
    """

    method: Method
    base_currency: str
    positions: tuple[PositionValue, ...]
    cash: Mapping[str, Decimal]
    market_value: Decimal
    cost_basis: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    cash_value: Decimal
    total_value: Decimal
    day_change: Decimal = ZERO


def value_position(
    figures: PositionFigures, quote: Quote | None, method: Method, scales: Scales
) -> PositionValue:
    places = scales.of(figures.currency)
    quantity = figures.quantity
    with localcontext(WORK):
        cost = at_scale(figures.cost(method), places)  # already at scale, unless empty
        average = round_to(cost / quantity, UNIT_COST_PLACES) if quantity else ZERO
        market_value = unrealized = day_change = None
        if quote is not None:
            market_value = round_to(quantity * quote.price, places)
            unrealized = market_value - cost
            if quote.previous_close is not None:
                day_change = market_value - round_to(quantity * quote.previous_close, places)
    return PositionValue(
        figures.symbol,
        figures.currency,
        quantity,
        cost,
        average,
        figures.realized(method),
        quote,
        market_value,
        unrealized,
        day_change,
    )


def valuate_figures(
    positions: Iterable[PositionFigures],
    cash: Mapping[str, Decimal],
    quotes: Mapping[str, Quote],
    method: Method,
    base_currency: str,
    scales: Scales | None = None,
) -> Valuation:
    """The positions and totals at `quotes` (see Valuation)."""
    scales = scales or Scales()
    values = tuple(
        value_position(f, quotes.get(f.symbol), method, scales)
        for f in sorted(positions, key=lambda f: f.symbol)
    )
    with localcontext(WORK):
        in_base = [v for v in values if v.currency == base_currency]
        market = sum(
            (v.market_value if v.market_value is not None else v.cost_basis for v in in_base), ZERO
        )
        cost = sum((v.cost_basis for v in in_base), ZERO)
        unrealized = sum((v.unrealized_pnl or ZERO for v in in_base), ZERO)
        realized = sum((v.realized_pnl for v in in_base), ZERO)
        cash_value = cash.get(base_currency, ZERO)
        total = market + cash_value
        day_change = sum((v.day_change or ZERO for v in in_base), ZERO)
    return Valuation(
        method,
        base_currency,
        values,
        dict(sorted(cash.items())),
        market,
        cost,
        unrealized,
        realized,
        cash_value,
        total,
        day_change,
    )


def valuate(
    holdings: Holdings,
    quotes: Mapping[str, Quote],
    method: Method,
    base_currency: str,
    scales: Scales | None = None,
) -> Valuation:
    """The portfolio's positions and totals at `quotes` (see Valuation)."""
    figures = [PositionFigures.of(p) for p in holdings.positions.values()]
    return valuate_figures(figures, holdings.cash(), quotes, method, base_currency, scales)


def realized_between(
    holdings: Holdings, method: Method, start: date | None, end: date | None
) -> list[Realization]:
    """Realized entries whose sale happened on a UTC day in [start, end] (both included)."""
    return [
        r
        for r in holdings.realizations(method)
        if (start is None or r.occurred_at.astimezone(UTC).date() >= start)
        and (end is None or r.occurred_at.astimezone(UTC).date() <= end)
    ]

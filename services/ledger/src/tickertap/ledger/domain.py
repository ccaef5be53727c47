"""The ledger's rules, pure: no I/O, no framework, standard library and tickertap.money only.

A transfer is immutable, has a caller-chosen id and two or more legs; the legs
balance to zero per asset; each amount respects its asset's scale. Posting a
transfer moves balances; a customer account never goes below minus its
overdraft limit. A mistake is corrected by a reversal (the negated legs),
at most once per transfer.

Errors are one tree; each has an HTTP status and a machine-readable code:

    LedgerError
    ├── 422  invalid transfers: unbalanced_transfer, scale_exceeded, unknown_account,
    │        unknown_asset, zero_amount, amount_not_positive, too_few_legs, too_many_legs,
    │        duplicate_account, asset_mismatch, not_a_customer_account, invalid_amount
    ├── 404  account_not_found, transfer_not_found
    └── 409  insufficient_funds, already_reversed, cannot_reverse_reversal, no_price,
             transfer_exists, idempotency_key_reused

InvalidMarketPrice (a ValueError, not a LedgerError) rejects a price event; the
price consumer dead-letters it with its reason.
"""

from __future__ import annotations

import enum
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, Inexact, localcontext
from operator import attrgetter
from typing import ClassVar

from tickertap.money import (
    CODE_PATTERN,
    DIGITS_MAX,
    SCALE_MAX,
    Asset,
    AssetKind,
    MoneyError,
    parse_amount,
    round_to_scale,
)

SYSTEM_OWNER = uuid.UUID(int=0)  # the owner id of system accounts on the wire
LEGS_MAX = 16
ZERO = Decimal(0)
# amounts, balances and prices are NUMERIC(38, 18) in the database and decimal(38, 18) in
# Avro: at most 20 integer digits and 18 places, whatever the asset's own scale
INTEGER_DIGITS_MAX = DIGITS_MAX - SCALE_MAX
# sums and balances are computed exactly: far more digits than any column, and an
# inexact result is an error rather than a rounding
EXACT = Context(prec=2 * DIGITS_MAX + 4, traps=[Inexact])
BALANCE_LIMIT = Decimal(10) ** INTEGER_DIGITS_MAX  # what NUMERIC(38, 18) holds
PRICE_SCALE_MAX = SCALE_MAX
_UUID_INT = attrgetter("int")


# -- errors ------------------------------------------------------------------------------


class LedgerError(Exception):
    status: ClassVar[int] = 422
    code: ClassVar[str] = "invalid_transfer"

    def __init__(self, detail: str, **extra: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class UnbalancedTransfer(LedgerError):
    code = "unbalanced_transfer"


class ScaleExceeded(LedgerError):
    code = "scale_exceeded"


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class UnknownAccount(LedgerError):
    code = "unknown_account"


class UnknownAsset(LedgerError):
    code = "unknown_asset"


class ZeroAmount(LedgerError):
    code = "zero_amount"


class AmountNotPositive(LedgerError):
    code = "amount_not_positive"


class TooFewLegs(LedgerError):
    code = "too_few_legs"


class TooManyLegs(LedgerError):
    code = "too_many_legs"


class DuplicateAccount(LedgerError):
    code = "duplicate_account"


class AssetMismatch(LedgerError):
    code = "asset_mismatch"


class NotACustomerAccount(LedgerError):
    code = "not_a_customer_account"


class AccountNotFound(LedgerError):
    status = 404
    code = "account_not_found"


class TransferNotFound(LedgerError):
    status = 404
    code = "transfer_not_found"


class InsufficientFunds(LedgerError):
    status = 409
    code = "insufficient_funds"


class AlreadyReversed(LedgerError):
    status = 409
    code = "already_reversed"


class CannotReverseReversal(LedgerError):
    status = 409
    code = "cannot_reverse_reversal"


class NoPrice(LedgerError):
    status = 409
    code = "no_price"


class TransferExists(LedgerError):
    status = 409
    code = "transfer_exists"


class IdempotencyKeyReused(LedgerError):
    status = 409
    code = "idempotency_key_reused"


class InvalidMarketPrice(ValueError):
    """A price event that cannot be used; not an HTTP error: its consumer dead-letters it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- the model ---------------------------------------------------------------------------


class AccountKind(enum.StrEnum):
    CUSTOMER = "customer"
    OMNIBUS = "omnibus"  # the money held for customers outside the ledger (bank, exchange)
    FEES = "fees"  # fees earned
    CUSTODY = "custody"  # securities held for customers


class TransferKind(enum.StrEnum):
    TRANSFER = "transfer"
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRADE = "trade"
    REVERSAL = "reversal"


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    owner_id: uuid.UUID | None  # None for system accounts
    asset: str
    kind: AccountKind
    overdraft_limit: Decimal = ZERO  # customer accounts may go down to -overdraft_limit

    @property
    def is_customer(self) -> bool:
        return self.kind is AccountKind.CUSTOMER

    @property
    def wire_owner(self) -> uuid.UUID:
        return self.owner_id or SYSTEM_OWNER


@dataclass(frozen=True, slots=True)
class Leg:
    account_id: uuid.UUID
    amount: Decimal  # signed: positive credits the account


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    notional: Decimal
    fee: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class PostTransfer:
    """A command: post these legs as one transfer."""

    transfer_id: uuid.UUID
    legs: tuple[Leg, ...]
    kind: TransferKind = TransferKind.TRANSFER
    metadata: Mapping[str, str] = field(default_factory=dict)
    trade: Trade | None = None
    reverses: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Posting:
    transfer_id: uuid.UUID
    account_id: uuid.UUID
    asset: str
    amount: Decimal
    balance_after: Decimal


@dataclass(frozen=True, slots=True)
class Transfer:
    """A validated transfer; `postings` carry each account's balance after it."""

    id: uuid.UUID
    kind: TransferKind
    postings: tuple[Posting, ...]
    metadata: Mapping[str, str]
    trade: Trade | None
    reverses: uuid.UUID | None


# -- validation ----------------------------------------------------------------------------


def check_amount(value: Decimal, asset: Asset) -> Decimal:
    """The amount at exactly the asset's scale; more places is an error, never rounded.

    At most INTEGER_DIGITS_MAX integer digits (what the amount columns hold), else
    invalid_amount.
    """
    if type(value) is Decimal:  # the common case, already at the scale: parse_amount's result
        sign, digits, exponent = value.as_tuple()
        if (
            exponent == -asset.scale
            and len(digits) <= INTEGER_DIGITS_MAX + asset.scale
            and (digits != (0,) or not sign)  # parse_amount makes '-0' 0
        ):
            return value
    try:
        return parse_amount(value, asset, digits_max=INTEGER_DIGITS_MAX + asset.scale)
    except MoneyError as exc:
        if exc.code == "scale_exceeded":
            raise ScaleExceeded(
                f"{asset.code} amounts have at most {asset.scale} decimal places",
                asset=asset.code,
            ) from exc
        raise InvalidAmount(exc.message) from exc


def validate(
    cmd: PostTransfer,
    accounts: Mapping[uuid.UUID, Account],
    assets: Mapping[str, Asset],
    *,
    legs_max: int = LEGS_MAX,
) -> tuple[Leg, ...]:
    """The legs of a well-formed transfer at their assets' scales, or a LedgerError."""
    if len(cmd.legs) < 2:
        raise TooFewLegs("a transfer has at least two legs")
    if len(cmd.legs) > legs_max:
        raise TooManyLegs(f"a transfer has at most {legs_max} legs")
    seen: set[uuid.UUID] = set()
    sums: dict[str, Decimal] = {}
    legs: list[Leg] = []
    for leg in cmd.legs:
        account = accounts.get(leg.account_id)
        if account is None:
            raise UnknownAccount(f"no account {leg.account_id}", account_id=str(leg.account_id))
        if leg.account_id in seen:
            raise DuplicateAccount("an account appears in one leg only")
        seen.add(leg.account_id)
        asset = assets.get(account.asset)
        if asset is None:
            raise UnknownAsset(f"no asset {account.asset}", asset=account.asset)
        amount = check_amount(leg.amount, asset)
        if not amount:
            raise ZeroAmount("a leg moves a non-zero amount")
        sums[asset.code] = EXACT.add(sums.get(asset.code, ZERO), amount)
        legs.append(leg if amount is leg.amount else Leg(leg.account_id, amount))
    unbalanced = sorted(code for code, total in sums.items() if total != ZERO)
    if unbalanced:
        raise UnbalancedTransfer(
            f"legs must sum to zero per asset; they do not for {', '.join(unbalanced)}",
            assets=",".join(unbalanced),
        )
    return tuple(legs)


def post(
    cmd: PostTransfer,
    accounts: Mapping[uuid.UUID, Account],
    assets: Mapping[str, Asset],
    balances: Mapping[uuid.UUID, Decimal],
    *,
    legs_max: int = LEGS_MAX,
) -> Transfer:
    """Validate and apply: the transfer with each account's balance after it.

    `balances` holds the current balance of every account in the legs; it is not
    changed. A customer account may not end below minus its overdraft limit.
    """
    legs = validate(cmd, accounts, assets, legs_max=legs_max)
    postings = []
    for leg in legs:
        account = accounts[leg.account_id]
        after = EXACT.add(balances[leg.account_id], leg.amount)
        if not -BALANCE_LIMIT < after < BALANCE_LIMIT:
            raise InvalidAmount(
                f"account {account.id} would exceed the largest balance the ledger holds",
                account_id=str(account.id),
            )
        if account.is_customer and after < -account.overdraft_limit:
            raise InsufficientFunds(
                f"account {account.id} would go below its limit",
                account_id=str(account.id),
            )
        postings.append(Posting(cmd.transfer_id, leg.account_id, account.asset, leg.amount, after))
    return Transfer(
        id=cmd.transfer_id,
        kind=cmd.kind,
        postings=tuple(postings),
        metadata=dict(cmd.metadata),
        trade=cmd.trade,
        reverses=cmd.reverses,
    )


def sum_by_asset(postings: Iterable[Posting]) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for p in postings:
        sums[p.asset] += p.amount
    return dict(sums)


# -- use cases as commands ------------------------------------------------------------------


def reversal(
    original: Transfer, reversal_id: uuid.UUID, metadata: Mapping[str, str]
) -> PostTransfer:
    """The transfer that undoes `original`: the same legs, negated."""
    if original.kind is TransferKind.REVERSAL:
        raise CannotReverseReversal("a reversal is not reversed; post a new transfer instead")
    return PostTransfer(
        transfer_id=reversal_id,
        legs=tuple(Leg(p.account_id, -p.amount) for p in original.postings),
        kind=TransferKind.REVERSAL,
        metadata=dict(metadata),
        trade=original.trade,  # the event contract: a trade's reversal carries its details
        reverses=original.id,
    )


def require_customer(account: Account) -> None:
    if not account.is_customer:
        raise NotACustomerAccount(f"account {account.id} is not a customer account")


def require_positive(amount: Decimal) -> None:
    if amount <= ZERO:
        raise AmountNotPositive("the amount must be greater than zero")


def deposit(
    transfer_id: uuid.UUID,
    customer: Account,
    omnibus: Account,
    amount: Decimal,
    metadata: Mapping[str, str],
) -> PostTransfer:
    """Cash in: the customer's account is credited, the omnibus (money held outside) debited."""
    require_customer(customer)
    require_positive(amount)
    return PostTransfer(
        transfer_id,
        (Leg(customer.id, amount), Leg(omnibus.id, -amount)),
        TransferKind.DEPOSIT,
        dict(metadata),
    )


def withdrawal(
    transfer_id: uuid.UUID,
    customer: Account,
    omnibus: Account,
    amount: Decimal,
    metadata: Mapping[str, str],
) -> PostTransfer:
    require_customer(customer)
    require_positive(amount)
    return PostTransfer(
        transfer_id,
        (Leg(customer.id, -amount), Leg(omnibus.id, amount)),
        TransferKind.WITHDRAWAL,
        dict(metadata),
    )


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Fee per trade: `rate_bps` of the notional, at least `minimum`, at most `maximum`."""

    rate_bps: Decimal = Decimal("5")
    minimum: Decimal = ZERO
    maximum: Decimal | None = None

    def fee(self, notional: Decimal, scale: int) -> Decimal:
        fee = round_to_scale(notional * self.rate_bps / Decimal(10_000), scale)
        fee = max(fee, round_to_scale(self.minimum, scale))
        if self.maximum is not None:
            fee = min(fee, round_to_scale(self.maximum, scale))
        return fee


@dataclass(frozen=True, slots=True)
class TradeAccounts:
    cash: Account  # the customer's account in the instrument's currency
    securities: Account  # the customer's account in the instrument
    omnibus: Account  # cash held outside (the counterparty side)
    fees: Account
    custody: Account  # securities held outside


def trade(
    transfer_id: uuid.UUID,
    side: Side,
    quantity: Decimal,
    price: Decimal,
    accounts: TradeAccounts,
    assets: Mapping[str, Asset],
    schedule: FeeSchedule,
    metadata: Mapping[str, str],
) -> PostTransfer:
    """One balanced transfer moving cash and shares, computed on the server.

    notional = quantity x price rounded half-even to the currency's scale; the fee
    from the schedule at the same scale. A buy debits notional + fee; a sell
    credits notional - fee.
    """
    require_customer(accounts.cash)
    require_customer(accounts.securities)
    instrument = assets[accounts.securities.asset]
    currency = assets[accounts.cash.asset]
    if instrument.kind is not AssetKind.SHARE and instrument.kind is not AssetKind.CRYPTO:
        raise UnknownAsset(f"{instrument.code} is not tradable", asset=instrument.code)
    quantity = check_amount(quantity, instrument)
    require_positive(quantity)
    price = check_price(price)
    try:
        notional = round_to_scale(exact_product(quantity, price), currency.scale)
    except MoneyError as exc:
        raise InvalidAmount(f"the notional is out of range: {exc.message}") from exc
    notional = check_amount(notional, currency)  # fits the amount columns
    require_positive(notional)
    fee = schedule.fee(notional, currency.scale)
    sign = Decimal(1) if side is Side.BUY else Decimal(-1)
    legs = [
        Leg(accounts.cash.id, -sign * notional - fee),
        Leg(accounts.omnibus.id, sign * notional),
        Leg(accounts.securities.id, sign * quantity),
        Leg(accounts.custody.id, -sign * quantity),
    ]
    if fee:
        legs.append(Leg(accounts.fees.id, fee))
    legs = [leg for leg in legs if leg.amount]  # a sale whose fee equals its notional
    details = Trade(instrument.code, side, quantity, price, notional, fee, currency.code)
    return PostTransfer(transfer_id, tuple(legs), TransferKind.TRADE, dict(metadata), details)


def exact_product(a: Decimal, b: Decimal) -> Decimal:
    """a x b without rounding (each has at most DIGITS_MAX digits): round once, after."""
    with localcontext() as ctx:
        ctx.prec = 2 * DIGITS_MAX + 2
        return a * b


def check_price(value: Decimal) -> Decimal:
    """A price greater than zero with at most PRICE_SCALE_MAX places (never rounded)."""
    try:
        price = parse_amount(
            value, PRICE_SCALE_MAX, digits_max=INTEGER_DIGITS_MAX + PRICE_SCALE_MAX
        )
    except MoneyError as exc:
        if exc.code == "scale_exceeded":
            raise ScaleExceeded(
                f"a price has at most {PRICE_SCALE_MAX} decimal places", field="price"
            ) from exc
        raise InvalidAmount(f"price: {exc.message}", field="price") from exc
    if price <= ZERO:
        raise AmountNotPositive("the price must be greater than zero", field="price")
    return plain(price)


def plain(value: Decimal) -> Decimal:
    """`value` without trailing zero places: 187.1200 -> 187.12, 100.00 -> 100 (not 1E+2).

    Exact whatever the Decimal context: digits are only dropped when they are zeros.
    """
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int), "a finite number"
    if exponent > 0:
        return Decimal((sign, (*digits, *(0,) * exponent), 0))
    while exponent < 0 and len(digits) > 1 and digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    return Decimal((sign, digits, exponent))


# -- trades ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradePolicy:
    """How trades are priced and charged (from settings).

    A share is quoted in its listed quote currency; a crypto asset in
    `crypto_quote_currency` when set, else it is not tradable. A market price is
    usable while younger than `price_age_s_max`, measured from its exchange time.
    """

    fees: FeeSchedule = field(default_factory=FeeSchedule)
    price_age_s_max: float = 60.0
    crypto_quote_currency: str | None = None


@dataclass(frozen=True, slots=True)
class ExecuteTrade:
    """A command: buy or sell `quantity` of `symbol` for `owner_id`, at `price` or at market."""

    trade_id: uuid.UUID
    owner_id: uuid.UUID
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal | None  # None: the latest market price the ledger has seen
    metadata: Mapping[str, str] = field(default_factory=dict)


def quote_currency(asset: Asset, listed: str | None, policy: TradePolicy) -> str:
    """The currency `asset` trades in, or UnknownAsset when it is not tradable."""
    if asset.kind is AssetKind.SHARE and listed is not None:
        quote = listed
    elif asset.kind is AssetKind.CRYPTO and policy.crypto_quote_currency is not None:
        quote = policy.crypto_quote_currency
    else:
        raise UnknownAsset(f"{asset.code} is not tradable", asset=asset.code)
    if quote == asset.code:
        raise UnknownAsset(f"{asset.code} cannot be quoted in itself", asset=asset.code)
    return quote


@dataclass(frozen=True, slots=True)
class MarketPrice:
    """The latest price of a symbol seen on marketdata.prices.v1."""

    symbol: str
    price: Decimal
    exchange_ts: datetime  # when the venue traded at this price
    received_at: datetime  # when market data received the tick


def check_market_price(update: MarketPrice, now: datetime, skew_s_max: float) -> MarketPrice:
    """A usable price update, or InvalidMarketPrice saying why.

    The symbol is an asset code; the price is greater than zero with at most
    PRICE_SCALE_MAX places; the exchange time is not later than `now` plus
    `skew_s_max` (a price from the future would shadow every real one after it).
    """
    if CODE_PATTERN.fullmatch(update.symbol) is None:
        raise InvalidMarketPrice("invalid_symbol", f"symbol {update.symbol!r} is not an asset code")
    try:
        price = check_price(update.price)
    except LedgerError as exc:
        raise InvalidMarketPrice("invalid_price", exc.detail) from exc
    for name, ts in (("exchange_ts", update.exchange_ts), ("received_at", update.received_at)):
        if ts.tzinfo is None:
            raise InvalidMarketPrice(f"invalid_{name}", f"{name} has no time zone")
    ahead_s = (update.exchange_ts - now).total_seconds()
    if ahead_s > skew_s_max:
        raise InvalidMarketPrice(
            "exchange_ts_in_future", f"exchange_ts is {ahead_s:.0f} s ahead of the ledger's clock"
        )
    return MarketPrice(update.symbol, price, update.exchange_ts, update.received_at)


def usable_price(
    cached: MarketPrice | None, symbol: str, now: datetime, age_s_max: float
) -> Decimal:
    """The cached price if it is fresh enough, else NoPrice (409)."""
    if cached is None:
        raise NoPrice(f"the ledger has seen no price for {symbol}; give a price", symbol=symbol)
    age_s = (now - cached.exchange_ts).total_seconds()
    if age_s > age_s_max:
        raise NoPrice(
            f"the latest price of {symbol} is {age_s:.0f} s old (at most {age_s_max:g} s)",
            symbol=symbol,
        )
    return plain(cached.price)


def event_key(transfer: Transfer, accounts: Mapping[uuid.UUID, Account]) -> str:
    """The Kafka key: the first customer the transfer concerns, else its first account."""
    for p in transfer.postings:
        owner = accounts[p.account_id].owner_id
        if owner is not None:
            return str(owner)
    return str(transfer.postings[0].account_id)


def lock_order(account_ids: Iterable[uuid.UUID]) -> Sequence[uuid.UUID]:
    """Accounts are locked in one global order, so concurrent transfers never deadlock.

    The order of the UUIDs (of their integers, as `UUID.__lt__` compares them, and as
    Postgres sorts the uuid type), with the integers as sort keys: a batch sorts
    thousands, and `UUID.__lt__` is Python code run for every comparison."""
    return sorted(set(account_ids), key=_UUID_INT)

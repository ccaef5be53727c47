"""The ledger's HTTP API: routes translate requests into handler calls and results back.

Who may do what (roles from the access token):
- `customer`: own accounts only: open, read, transfer from (every debited account must
  be theirs), withdraw from, trade at market.
- `support`: read every account and transfer.
- `ops`, `admin`: everything, including deposits, reversals, assets, overdrafts, trades
  for any owner and trades at a given execution price.
Row-level security in Postgres holds the same line for reads.
"""

# No `from __future__ import annotations`: FastAPI must read the annotations of the
# routes built inside `build_router`, and they name local aliases (Anyone, Operator).

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from tickertap.authn import BearerAuth, Principal
from tickertap.ledger import domain as d
from tickertap.ledger import repository as repo
from tickertap.ledger import schemas as s
from tickertap.ledger.handlers import Ledger, Posted, TransferRequest
from tickertap.money import Asset, AssetKind
from tickertap.runtime import Forbidden, Unprocessable, direct

READ_ALL = frozenset({"support", "ops", "admin"})
WRITE_ALL = frozenset({"ops", "admin"})
PAGE_SIZE_MAX = 500
ACCOUNTS_PAGE_MAX = 200
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:\-]{8,128}$"
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


class IdempotencyKeyRequired(Unprocessable):
    code = "idempotency_key_required"


class InvalidCursor(Unprocessable):
    code = "invalid_cursor"


async def get_ledger(request: Request) -> Ledger:
    ledger = request.app.state.runtime.state["ledger"]
    assert isinstance(ledger, Ledger)
    return ledger


LedgerDep = Annotated[Ledger, Depends(get_ledger)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN),
]


def can_read_all(p: Principal) -> bool:
    return not READ_ALL.isdisjoint(p.roles)


def can_write_all(p: Principal) -> bool:
    return not WRITE_ALL.isdisjoint(p.roles)


def subject_id(p: Principal) -> uuid.UUID:
    try:
        return uuid.UUID(p.subject)
    except ValueError:
        raise Forbidden("this token's subject owns no accounts") from None


def request_hash(route: str, body: Any) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).digest()


def owner_key(p: Principal, key: str | None) -> str | None:
    """The key in the caller's own namespace (length-prefixed: no two callers collide)."""
    return None if key is None else f"{len(p.subject)}:{p.subject}:{key}"


async def _scales(ledger: Ledger, codes: Iterable[str]) -> dict[str, int]:
    """The scales of `codes` (not of every asset: this runs for every response); the assets
    are reloaded when one of them is new to this replica."""
    wanted = set(codes)
    assets = await ledger.assets()
    if not wanted <= assets.keys():
        assets = await ledger.assets(refresh=True)
    return {code: assets[code].asset.scale for code in wanted if code in assets}


def _codes(transfer: d.Transfer) -> set[str]:
    codes = {p.asset for p in transfer.postings}
    if transfer.trade is not None:
        codes |= {transfer.trade.symbol, transfer.trade.currency}
    return codes


async def _transfer_response(ledger: Ledger, posted: Posted) -> Response:
    scales = await _scales(ledger, _codes(posted.transfer))
    return Response(
        to_json(s.transfer_body(posted.transfer, posted.created_at, scales)),
        status_code=200 if posted.replayed else 201,
        media_type="application/json",
    )


M = TypeVar("M", bound=BaseModel)
SELF_PARSED_BODIES = (s.TransferCreate, s.BatchCreate)  # see `json_body`; in the OpenAPI


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as `model`, parsed by pydantic-core in one pass; errors are
    the 422 FastAPI gives a declared body (`RequestValidationError`, locations under body)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None


def _amount(text: str) -> Decimal:
    return Decimal(text)


def build_router(auth: BearerAuth) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["ledger"])
    Anyone = Annotated[Principal, Depends(auth.require())]
    Operator = Annotated[Principal, Depends(auth.require(roles_any=WRITE_ALL))]
    Reader = Annotated[Principal, Depends(auth.require(roles_any=READ_ALL))]

    # -- assets ------------------------------------------------------------------------

    @router.get("/assets")
    async def list_assets(ledger: LedgerDep, _: Anyone) -> list[s.AssetPublic]:
        return [s.AssetPublic.of(row) for row in (await ledger.assets(refresh=True)).values()]

    @router.post("/assets", status_code=201)
    async def create_asset(body: s.AssetCreate, ledger: LedgerDep, _: Operator) -> s.AssetPublic:
        if (body.kind == "share") != (body.quote_currency is not None):
            raise Unprocessable("a share has a quote currency; nothing else has one")
        row = repo.AssetRow(Asset(body.code, body.scale, AssetKind(body.kind)), body.quote_currency)
        return s.AssetPublic.of(await ledger.create_asset(row))

    # -- accounts ----------------------------------------------------------------------

    @router.post("/accounts", status_code=201)
    async def open_account(
        body: s.AccountCreate, ledger: LedgerDep, principal: Anyone, response: Response
    ) -> s.AccountPublic:
        owner = body.owner_id or subject_id(principal)
        if not can_write_all(principal):
            if owner != subject_id(principal):
                raise Forbidden("customers open accounts for themselves only")
            if Decimal(body.overdraft_limit) != 0:
                raise Forbidden("an overdraft is granted by operations")
        row, created = await ledger.open_account(owner, body.asset, _amount(body.overdraft_limit))
        if not created:
            response.status_code = 200
        scale = (await ledger.asset(row.account.asset)).asset.scale
        return s.AccountPublic.of(row, scale)

    @router.get("/accounts")
    async def list_accounts(
        ledger: LedgerDep,
        principal: Anyone,
        owner: Annotated[uuid.UUID | None, Query()] = None,
        cursor: Annotated[uuid.UUID | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=ACCOUNTS_PAGE_MAX)] = 100,
    ) -> s.AccountList:
        """The owner's accounts, oldest first, in pages: pass `next_cursor` back as `cursor`
        (null on the last page; it is the id of the page's last account)."""
        owner = owner or subject_id(principal)
        # readers of all first: a machine client's subject (client:<id>) is not a customer id
        if not can_read_all(principal) and owner != subject_id(principal):
            raise Forbidden("customers see their own accounts only")
        async with ledger.reading(None if can_read_all(principal) else owner) as conn:
            after = None
            if cursor is not None:
                after = (await repo.get_accounts(conn, [cursor])).get(cursor)
                if after is None or after.account.owner_id != owner:
                    raise InvalidCursor("cursor is not one of this owner's accounts")
            rows = await repo.list_accounts(conn, owner, limit, after)
        scales = await _scales(ledger, {r.account.asset for r in rows})
        return s.AccountList(
            items=[s.AccountPublic.of(r, scales[r.account.asset]) for r in rows],
            next_cursor=str(rows[-1].account.id) if len(rows) == limit else None,
        )

    @router.get("/owners")
    async def list_owners(
        ledger: LedgerDep,
        _: Reader,
        cursor: Annotated[uuid.UUID | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 100,
    ) -> s.OwnerPage:
        """Every owner of customer accounts, in id order and in pages (readers of all only):
        what a reconciliation walks to find customers another service does not know."""
        async with ledger.reading(None) as conn:
            owners = await repo.list_owners(conn, cursor, limit)
        return s.OwnerPage(
            items=owners, next_cursor=str(owners[-1]) if len(owners) == limit else None
        )

    async def visible_account(
        ledger: Ledger, principal: Principal, account_id: uuid.UUID
    ) -> repo.AccountRow:
        """The account if the caller may see it; 404 otherwise (no existence leak)."""
        owner = None if can_read_all(principal) else subject_id(principal)
        async with ledger.reading(owner) as conn:
            rows = await repo.get_accounts(conn, [account_id])
        if account_id not in rows:
            raise d.AccountNotFound(f"no account {account_id}")
        return rows[account_id]

    @router.get("/accounts/{account_id}")
    async def get_account(
        account_id: uuid.UUID, ledger: LedgerDep, principal: Anyone
    ) -> s.AccountPublic:
        row = await visible_account(ledger, principal, account_id)
        return s.AccountPublic.of(
            row, (await _scales(ledger, [row.account.asset]))[row.account.asset]
        )

    @router.get("/accounts/{account_id}/balance")
    async def get_balance(
        account_id: uuid.UUID,
        ledger: LedgerDep,
        principal: Anyone,
        as_of: Annotated[datetime | None, Query()] = None,
    ) -> s.BalancePublic:
        row = await visible_account(ledger, principal, account_id)
        scale = (await _scales(ledger, [row.account.asset]))[row.account.asset]
        balance = row.balance
        if as_of is not None:
            if as_of.tzinfo is None:
                raise Unprocessable("as_of needs a time zone (for example 2026-01-01T00:00:00Z)")
            async with ledger.reading(None) as conn:
                found = await repo.balance_as_of(conn, account_id, as_of)
            balance = found if found is not None else Decimal(0)
        return s.BalancePublic(
            account_id=account_id,
            asset=row.account.asset,
            balance=s._fmt(balance, scale),
            as_of=as_of,
        )

    @router.get("/accounts/{account_id}/postings")
    async def list_postings(
        account_id: uuid.UUID,
        ledger: LedgerDep,
        principal: Anyone,
        cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 100,
    ) -> s.PostingPage:
        row = await visible_account(ledger, principal, account_id)
        scale = (await _scales(ledger, [row.account.asset]))[row.account.asset]
        async with ledger.reading(None) as conn:
            rows = await repo.list_postings(conn, account_id, int(cursor or 0), limit)
        items = [
            s.PostingPublic(
                id=r.id,
                transfer_id=r.transfer_id,
                amount=s._fmt(r.amount, scale),
                balance_after=s._fmt(r.balance_after, scale),
                posted_at=r.posted_at,
            )
            for r in rows
        ]
        return s.PostingPage(
            items=items, next_cursor=str(rows[-1].id) if len(rows) == limit else None
        )

    # -- transfers ---------------------------------------------------------------------

    async def foreign_debits(
        ledger: Ledger, principal: Principal, commands: Sequence[d.PostTransfer]
    ) -> dict[int, Forbidden]:
        """Customers may only take money out of their own accounts: the commands (by
        index) that debit someone else's, found with one lookup for them all."""
        if can_write_all(principal):
            return {}
        me = subject_id(principal)
        debited = [
            [leg.account_id for leg in cmd.legs if Decimal(leg.amount) < 0] for cmd in commands
        ]
        owners = await ledger.account_owners(list({a for ids in debited for a in ids}))
        return {
            index: Forbidden("a transfer may only debit the caller's own accounts")
            for index, ids in enumerate(debited)
            if any((a := owners.get(i)) is not None and a.owner_id != me for i in ids)
        }

    async def check_debits(ledger: Ledger, principal: Principal, cmd: d.PostTransfer) -> None:
        refused = await foreign_debits(ledger, principal, [cmd])
        if refused:
            raise refused[0]

    def transfer_command(body: s.TransferCreate) -> d.PostTransfer:
        return d.PostTransfer(
            transfer_id=body.transfer_id,
            legs=tuple(d.Leg(leg.account_id, _amount(leg.amount)) for leg in body.legs),
            metadata=dict(body.metadata),
        )

    # The hottest route reads its body, header and token itself: FastAPI's dependency
    # machinery costs about 0.2 ms a request here, more than the transfer's own work.
    # Its OpenAPI entry and its errors are the same as if they were declared.
    @router.post(
        "/transfers",
        status_code=201,
        response_model=s.TransferPublic,
        responses={
            200: {"description": "an idempotent retry: the original transfer"},
            422: {"description": "an invalid body or Idempotency-Key (problem details)"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/TransferCreate"}}
                },
            },
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                }
            ],
            "security": auth.openapi_security,
        },
    )
    @direct
    async def post_transfer(request: Request) -> Response:
        principal = await auth.authenticate(request, frozenset(), frozenset())
        key = request.headers.get("idempotency-key")
        if key is None:
            raise IdempotencyKeyRequired("send an Idempotency-Key header (8-128 characters)")
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise RequestValidationError(
                [
                    {
                        "loc": ("header", "Idempotency-Key"),
                        "msg": f"String should match pattern '{IDEMPOTENCY_KEY_PATTERN}'",
                        "type": "string_pattern_mismatch",
                    }
                ]
            )
        body = await json_body(request, s.TransferCreate)
        ledger = await get_ledger(request)
        cmd = transfer_command(body)
        await check_debits(ledger, principal, cmd)
        posted = await ledger.post(
            TransferRequest(
                cmd,
                owner_key(principal, key),
                request_hash("POST /v1/transfers", body.model_dump(mode="json")),
            )
        )
        return await _transfer_response(ledger, posted)

    @router.post(
        "/transfers/batch",
        response_model=s.BatchResult,
        responses={422: {"description": "an invalid body (problem details)"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreate"}}
                },
            },
            "security": auth.openapi_security,
        },
    )
    @direct
    async def post_batch(request: Request) -> Response:
        """Up to 1,000 transfers; each succeeds or fails on its own (its result says which)."""
        principal = await auth.authenticate(request, frozenset(), frozenset())
        body = await json_body(request, s.BatchCreate)
        ledger = await get_ledger(request)
        results: list[dict[str, Any] | None] = [None] * len(body.transfers)
        commands = [transfer_command(item) for item in body.transfers]
        foreign = await foreign_debits(ledger, principal, commands)
        requests: list[tuple[int, TransferRequest]] = []
        for index, cmd in enumerate(commands):
            if index in foreign:
                error = foreign[index]
                results[index] = s.batch_item_body(
                    index, error.status, code=error.code, detail=error.detail
                )
                continue
            requests.append((index, TransferRequest(cmd, None, b"")))
        outcomes = await ledger.post_many([r for _, r in requests])
        scales = await _scales(
            ledger, {c for o in outcomes if isinstance(o, Posted) for c in _codes(o.transfer)}
        )
        for (index, _), outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, d.LedgerError):
                results[index] = s.batch_item_body(
                    index, outcome.status, code=outcome.code, detail=outcome.detail
                )
            else:
                transfer = s.transfer_body(outcome.transfer, outcome.created_at, scales)
                results[index] = s.batch_item_body(index, 201, transfer)
        # the BatchResult's JSON, without a model per item (s.transfer_body says why)
        result = {"results": [r for r in results if r is not None]}
        return Response(to_json(result), media_type="application/json")

    @router.get("/transfers/{transfer_id}")
    async def get_transfer(
        transfer_id: uuid.UUID, ledger: LedgerDep, principal: Anyone
    ) -> s.TransferPublic:
        owner = None if can_read_all(principal) else subject_id(principal)
        async with ledger.reading(owner) as conn:
            found = await repo.get_transfers(conn, [transfer_id])
        if transfer_id not in found:
            raise d.TransferNotFound(f"no transfer {transfer_id}")
        stored = found[transfer_id]
        scales = await _scales(ledger, _codes(stored.transfer))
        return s.TransferPublic.of(stored.transfer, stored.created_at, scales)

    @router.post("/transfers/{transfer_id}/reversal", status_code=201)
    async def reverse(
        transfer_id: uuid.UUID,
        body: s.ReversalCreate,
        ledger: LedgerDep,
        principal: Operator,
        idempotency_key: IdempotencyKey = None,
    ) -> s.TransferPublic:
        cmd = await ledger.reversal_command(transfer_id, body.reversal_id, body.metadata)
        posted = await ledger.post(
            TransferRequest(
                cmd,
                owner_key(principal, idempotency_key),
                request_hash(
                    f"POST /v1/transfers/{transfer_id}/reversal", body.model_dump(mode="json")
                ),
            )
        )
        return await _transfer_response(ledger, posted)  # type: ignore[return-value]

    async def cash(
        route: str,
        body: s.CashMovement,
        ledger: Ledger,
        principal: Principal,
        key: str | None,
        *,
        withdraw: bool,
    ) -> Response:
        if not can_write_all(principal):
            account = await visible_account(ledger, principal, body.account_id)
            if not withdraw or account.account.owner_id != subject_id(principal):
                raise Forbidden("deposits are made by operations")
        cmd = await ledger.deposit_command(
            body.transfer_id,
            body.account_id,
            _amount(body.amount),
            body.metadata,
            withdraw=withdraw,
        )
        posted = await ledger.post(
            TransferRequest(
                cmd, owner_key(principal, key), request_hash(route, body.model_dump(mode="json"))
            )
        )
        return await _transfer_response(ledger, posted)

    @router.post(
        "/trades",
        status_code=201,
        responses={200: {"description": "an idempotent retry: the original trade"}},
    )
    async def post_trade(
        body: s.TradeCreate,
        ledger: LedgerDep,
        principal: Anyone,
        idempotency_key: IdempotencyKey = None,
    ) -> s.TransferPublic:
        """Buy or sell a share (or a crypto asset with a configured quote currency).

        One balanced transfer moves the notional between the owner's cash account in
        the quote currency and the cash omnibus, the fee to the fees account, and the
        quantity between the custody account and the owner's account in the symbol
        (opened by a buy). Errors: 422 unknown_asset (unknown or not tradable),
        scale_exceeded, amount_not_positive, invalid_amount, unknown_account (no cash
        account in the quote currency); 409 no_price, insufficient_funds (cash or
        shares), transfer_exists, idempotency_key_reused; 403 for another owner or a
        given price without the ops role.
        """
        owner = body.owner_id or subject_id(principal)
        if not can_write_all(principal):
            if owner != subject_id(principal):
                raise Forbidden("customers trade for themselves only")
            if body.price is not None:
                raise Forbidden("an execution price is given by operations; trade at market")
        posted = await ledger.trade(
            d.ExecuteTrade(
                trade_id=body.trade_id,
                owner_id=owner,
                symbol=body.symbol,
                side=d.Side(body.side),
                quantity=_amount(body.quantity),
                price=None if body.price is None else _amount(body.price),
                metadata=dict(body.metadata),
            ),
            owner_key(principal, idempotency_key),
            request_hash("POST /v1/trades", body.model_dump(mode="json")),
        )
        return await _transfer_response(ledger, posted)  # type: ignore[return-value]

    @router.post("/deposits", status_code=201)
    async def deposit(
        body: s.CashMovement,
        ledger: LedgerDep,
        principal: Operator,
        idempotency_key: IdempotencyKey = None,
    ) -> s.TransferPublic:
        return await cash(  # type: ignore[return-value]
            "POST /v1/deposits", body, ledger, principal, idempotency_key, withdraw=False
        )

    @router.post("/withdrawals", status_code=201)
    async def withdraw(
        body: s.CashMovement,
        ledger: LedgerDep,
        principal: Anyone,
        idempotency_key: IdempotencyKey = None,
    ) -> s.TransferPublic:
        return await cash(  # type: ignore[return-value]
            "POST /v1/withdrawals", body, ledger, principal, idempotency_key, withdraw=True
        )

    return router

"""Reconciliation: every portfolio's balances equal its owner's ledger balances.

    deploy/local/stack.py exec portfolio-calculation -- python -m tickertap.portfolio.reconcile
    RECONCILE_LEDGER_TOKEN=<ops token> python -m tickertap.portfolio.reconcile \\
        --ledger-url http://127.0.0.1:25402

The portfolio service never reads the ledger's schema; this check asks the ledger's
HTTP API (a token with the `ops`, `support` or `admin` role). It walks every owner the
ledger lists (`GET /v1/owners`) as well as every portfolio the service knows, reads each
one's accounts (`GET /v1/accounts?owner=`, every page) and compares every asset's
balance (cash and instruments; an asset missing on one side counts as zero, so a
customer the ledger knows with a nonzero balance and no portfolio here is drift). It
also checks each position's quantity (its open lots) against the balance of its symbol.
Events in flight make a fresh transfer look like drift for a moment: a portfolio that
differs is read again after `--settle-s` and only a difference that stays is drift.

Prints a JSON report; exit 0: no drift; 1: drift (each portfolio named, at most
`--items-max`, with the assets that differ); 2: could not reconcile. Every drifting
portfolio is also a log line. The token: `--token-file`, else RECONCILE_LEDGER_TOKEN
(not a TICKERTAP_ variable: `stack.py exec` passes those through from the stack only),
else the service's own machine client (TICKERTAP_RECONCILE_* settings, what the periodic
job in reconcile_job.py uses); never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.money import install_context
from tickertap.observability import configure_logging
from tickertap.portfolio import repository as repo
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime.login import command_engine

log = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2
TOKEN_ENV = "RECONCILE_LEDGER_TOKEN"  # noqa: S105 - a variable name, not a token  # nosec B105
ACCOUNTS_PAGE_MAX = 200  # the ledger's bound on GET /v1/accounts
ACCOUNT_PAGES_MAX = 1000  # an owner with more accounts than this many pages is an error
OWNERS_PAGE_MAX = 500  # the ledger's bound on GET /v1/owners
CONCURRENCY_MAX_DEFAULT = 4  # ledger requests in flight
OWNERS_BATCH_MAX_DEFAULT = 200  # owners read from this service's schema in one transaction
CONCURRENCY_MAX_MAX = 64
TOKEN_RENEW_FRACTION = 0.8  # a kept token is renewed after this part of its lifetime
TOKEN_TTL_S_ASSUMED = 300.0  # when the token endpoint does not say (it should)
HTTP_TIMEOUT_S = 10.0
SETTLE_S_DEFAULT = 2.0
ITEMS_MAX_DEFAULT = 100
ITEMS_MAX_MAX = 10_000
ZERO = Decimal(0)


class LedgerUnavailable(Exception):
    """The ledger's API did not answer as expected (status, body)."""


class TokenUnavailable(Exception):
    """The auth service gave no token (its status and OAuth error code, never the secret)."""


class StaticToken:
    """A token given by the operator (it expires when it expires)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    def forget(self) -> None:
        pass


class ClientCredentialsToken:
    """Access tokens from an OAuth 2 client-credentials grant (RFC 6749 section 4.4) for a
    machine client, kept until shortly before they expire; one request at a time."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        secret: Callable[[], str],
        *,
        scope: str | None,
        timeout_s: float,
    ) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._secret = secret
        self._scope = scope
        self._timeout_s = timeout_s
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token, ttl_s = await self._fetch()
                self._renew_at = time.monotonic() + ttl_s * TOKEN_RENEW_FRACTION
            return self._token

    def forget(self) -> None:
        """Drop the kept token (the ledger refused it): the next call asks for a new one."""
        self._token = None

    async def _fetch(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret(),
        }
        if self._scope:
            form["scope"] = self._scope
        async with httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False) as http:
            r = await http.post(self._token_url, data=form)
        if r.status_code != 200:
            try:
                error = str(r.json().get("error"))
            except ValueError:
                error = "unreadable"
            raise TokenUnavailable(f"the token endpoint answered {r.status_code} ({error})")
        body = r.json()
        return str(body["access_token"]), float(body.get("expires_in", TOKEN_TTL_S_ASSUMED))


class TokenSource(Protocol):
    async def token(self) -> str: ...

    def forget(self) -> None: ...


class BearerFrom(httpx.Auth):
    """httpx authentication with a token source; a 401 asks for a new token once."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self.source.token()}"
        response = yield request
        if response.status_code == 401:
            self.source.forget()
            request.headers["Authorization"] = f"Bearer {await self.source.token()}"
            yield request


def ledger_client(
    settings: PortfolioSettings, ledger_url: str, source: TokenSource
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=ledger_url,
        auth=BearerFrom(source),
        timeout=settings.reconcile_http_timeout_s,
        follow_redirects=False,
    )


def machine_token(settings: PortfolioSettings) -> ClientCredentialsToken:
    """The service's own machine client (see the settings); requires `reconcile_configured`."""
    assert settings.reconcile_token_url is not None
    assert settings.reconcile_client_id is not None
    return ClientCredentialsToken(
        settings.reconcile_token_url,
        settings.reconcile_client_id,
        settings.reconcile_client_secret_value,
        scope=settings.reconcile_scope or None,
        timeout_s=settings.reconcile_http_timeout_s,
    )


@dataclass
class Report:
    portfolios: int = 0  # the service's portfolios checked
    ledger_only: int = 0  # owners of ledger accounts with no portfolio here, checked too
    drifting: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "portfolios": self.portfolios,
            "ledger_only": self.ledger_only,
            "drifting": self.drifting,
            "items": self.items,
        }


async def ledger_balances(client: httpx.AsyncClient, owner_id: uuid.UUID) -> dict[str, Decimal]:
    """The owner's balance of every asset, from every page of `GET /v1/accounts?owner=`."""
    balances: dict[str, Decimal] = {}
    cursor: str | None = None
    for _ in range(ACCOUNT_PAGES_MAX):
        params: dict[str, str | int] = {"owner": str(owner_id), "limit": ACCOUNTS_PAGE_MAX}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/v1/accounts", params=params)
        if r.status_code != 200:
            raise LedgerUnavailable(f"GET /v1/accounts answered {r.status_code}")
        body = r.json()
        for a in body["items"]:
            balances[a["asset"]] = balances.get(a["asset"], ZERO) + Decimal(a["balance"])
        if "next_cursor" not in body and len(body["items"]) >= ACCOUNTS_PAGE_MAX:
            # a ledger from before account pages: a full page may not be all of them
            raise LedgerUnavailable(f"owner {owner_id} has {ACCOUNTS_PAGE_MAX} accounts or more")
        cursor = body.get("next_cursor")
        if cursor is None:
            return balances
    raise LedgerUnavailable(f"owner {owner_id} has more than {ACCOUNT_PAGES_MAX} pages of accounts")


async def ledger_owners(client: httpx.AsyncClient) -> AsyncIterator[list[uuid.UUID]]:
    """Every owner of ledger accounts, a page at a time (`GET /v1/owners`); nothing from a
    ledger that does not list owners (404), which is logged."""
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": OWNERS_PAGE_MAX}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/v1/owners", params=params)
        if r.status_code == 404 and cursor is None:
            log.warning("the ledger does not list owners: only known portfolios are checked")
            return
        if r.status_code != 200:
            raise LedgerUnavailable(f"GET /v1/owners answered {r.status_code}")
        body = r.json()
        yield [uuid.UUID(o) for o in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return


def differences(
    ours: Mapping[str, Decimal], theirs: Mapping[str, Decimal]
) -> dict[str, dict[str, str]]:
    """Assets whose balances differ: {asset: {"portfolio": ..., "ledger": ...}}."""
    return {
        asset: {"portfolio": str(ours.get(asset, ZERO)), "ledger": str(theirs.get(asset, ZERO))}
        for asset in sorted(set(ours) | set(theirs))
        if ours.get(asset, ZERO) != theirs.get(asset, ZERO)
    }


async def portfolio_views(
    engine: AsyncEngine, owner_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[dict[str, Decimal], dict[str, dict[str, str]]]]:
    """Each portfolio's balances, and positions whose quantity is not their symbol's
    balance (one transaction for them all; an unknown owner has neither)."""
    async with engine.begin() as conn:
        await repo.see_all(conn)
        balances = await repo.balances_of(conn, owner_ids)
        positions = await repo.positions_of(conn, owner_ids)
    views = {}
    for owner_id in owner_ids:
        ours = balances[owner_id]
        inconsistent = {
            p.symbol: {"lots": str(p.quantity), "balance": str(ours.get(p.symbol, ZERO))}
            for p in positions[owner_id]
            if p.quantity != ours.get(p.symbol, ZERO)
        }
        views[owner_id] = (ours, inconsistent)
    return views


async def reconcile(
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    *,
    settle_s: float,
    items_max: int,
    only: list[uuid.UUID] | None = None,
    concurrency_max: int = CONCURRENCY_MAX_DEFAULT,
    batch_max: int = OWNERS_BATCH_MAX_DEFAULT,
) -> Report:
    """See the module docstring; `only`: these portfolios instead of every one (and no
    walk of the ledger's owners). Owners go in batches: their ledger accounts with
    `concurrency_max` requests in flight, then their portfolios in one transaction
    (`batch_max` owners a batch)."""
    if only:
        known = set(only)
        owners = sorted(known)
    else:
        async with engine.begin() as conn:
            await repo.see_all(conn)
            known = set(await repo.owners(conn))
        others: set[uuid.UUID] = set()
        async for page in ledger_owners(client):
            others.update(o for o in page if o not in known)
        owners = sorted(known | others)
    report = Report(portfolios=len(known), ledger_only=len(owners) - len(known))

    requests = asyncio.Semaphore(concurrency_max)

    async def theirs(owner_id: uuid.UUID) -> dict[str, Decimal]:
        async with requests:
            return await ledger_balances(client, owner_id)

    async def checked(batch: list[uuid.UUID]) -> list[tuple[uuid.UUID, Any, Any]]:
        """Ledger first, then this service: a transfer applied in between shows as a
        difference on the ledger's side, which the second look after settling clears."""
        ledger = await asyncio.gather(*(theirs(o) for o in batch))
        views = await portfolio_views(engine, batch)
        return [
            (o, differences(views[o][0], found), views[o][1])
            for o, found in zip(batch, ledger, strict=True)
        ]

    suspects = []
    for start in range(0, len(owners), batch_max):
        for owner_id, diff, inconsistent in await checked(owners[start : start + batch_max]):
            if diff or inconsistent:
                suspects.append(owner_id)
    if suspects:
        await asyncio.sleep(settle_s)
    for start in range(0, len(suspects), batch_max):
        for owner_id, diff, inconsistent in await checked(suspects[start : start + batch_max]):
            if not (diff or inconsistent):
                continue
            report.drifting += 1
            log.warning(
                "portfolio drifts from the ledger",
                extra={
                    "portfolio_id": str(owner_id),
                    "known": owner_id in known,
                    "assets": sorted(diff),
                    "positions": sorted(inconsistent),
                },
            )
            if len(report.items) < items_max:
                item: dict[str, Any] = {"portfolio_id": str(owner_id), "balances": diff}
                if owner_id not in known:
                    item["known"] = False  # the ledger's customer has no portfolio here
                if inconsistent:
                    item["positions"] = inconsistent
                report.items.append(item)
    return report


async def reconcile_with_vault(
    settings: PortfolioSettings,
    ledger_url: str,
    source: TokenSource,
    *,
    settle_s: float,
    items_max: int,
    only: list[uuid.UUID] | None = None,
    concurrency_max: int = CONCURRENCY_MAX_DEFAULT,
) -> Report:
    """Log in as the service does (`tickertap.runtime.login.command_engine`) and reconcile."""
    async with (
        command_engine(settings, "portfolio-reconcile", read_only=True) as engine,
        ledger_client(settings, ledger_url, source) as client,
    ):
        return await reconcile(
            engine,
            client,
            settle_s=settle_s,
            items_max=items_max,
            only=only,
            concurrency_max=concurrency_max,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tickertap.portfolio.reconcile",
        description=(
            "Compare every portfolio's balances with the ledger's (its HTTP API). "
            "Exit 0: no drift; 1: drift; 2: could not reconcile."
        ),
    )
    parser.add_argument(
        "--ledger-url", help="the ledger's base URL (else TICKERTAP_RECONCILE_LEDGER_URL)"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"an ops or support token (else ${TOKEN_ENV}, else the service's machine client)",
    )
    parser.add_argument("--settle-s", type=float, default=SETTLE_S_DEFAULT)
    parser.add_argument("--items-max", type=int, default=ITEMS_MAX_DEFAULT)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY_MAX_DEFAULT)
    parser.add_argument(
        "--portfolio", type=uuid.UUID, action="append", help="check only this one (repeatable)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.items_max <= ITEMS_MAX_MAX:
        parser.error(f"--items-max must be in [1, {ITEMS_MAX_MAX}]")
    if not 0 <= args.settle_s <= 60:
        parser.error("--settle-s must be in [0, 60]")
    if not 1 <= args.concurrency <= CONCURRENCY_MAX_MAX:
        parser.error(f"--concurrency must be in [1, {CONCURRENCY_MAX_MAX}]")
    token = (
        args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV, "")
    )
    install_context()
    try:
        settings = PortfolioSettings()  # type: ignore[call-arg]  # from the environment
    except Exception as exc:  # pydantic's ValidationError names the missing variables
        print(f"reconcile: bad settings: {exc}", file=sys.stderr)
        return EXIT_ERROR
    ledger_url = args.ledger_url or settings.reconcile_ledger_url
    if not ledger_url:
        parser.error("give --ledger-url (or set TICKERTAP_RECONCILE_LEDGER_URL)")
    if not (token or settings.reconcile_configured()):
        parser.error(
            f"give a token (--token-file or ${TOKEN_ENV}) or configure the service's "
            "machine client (TICKERTAP_RECONCILE_TOKEN_URL, _CLIENT_ID, _CLIENT_SECRET_FILE)"
        )
    source: TokenSource = StaticToken(token) if token else machine_token(settings)
    configure_logging("portfolio-reconcile", settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        report = asyncio.run(
            reconcile_with_vault(
                settings,
                ledger_url,
                source,
                settle_s=args.settle_s,
                items_max=args.items_max,
                only=args.portfolio,
                concurrency_max=args.concurrency,
            )
        )
    except Exception as exc:
        log.error("reconciliation failed", extra={"error": type(exc).__name__})
        print(f"reconcile: could not reconcile: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report.to_json(), indent=2))
    return EXIT_CLEAN if report.drifting == 0 else EXIT_DRIFT


if __name__ == "__main__":
    sys.exit(main())

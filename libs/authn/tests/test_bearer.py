"""The FastAPI dependency: 401 and 403 as problem details with RFC 6750 challenges.

No `from __future__ import annotations`: FastAPI must read the routes' annotations,
which name aliases local to `make_app`.
"""

import socket
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from tickertap.authn import AccessTokenVerifier, BearerAuth, HttpJwks, Principal, bearer_token
from tickertap.authn.errors import InvalidToken, MissingToken
from tickertap.authn.testing import TokenMinter
from tickertap.runtime import install_error_handlers

CHALLENGE = 'Bearer error="invalid_token"'


def make_app(minter: TokenMinter, auth: BearerAuth | None = None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    auth = auth or BearerAuth(minter.verifier())
    principal_dep = Annotated[Principal, Depends(auth.require())]
    reader_dep = Annotated[Principal, Depends(auth.require(scopes_all=["ledger:read"]))]
    writer_dep = Annotated[
        Principal, Depends(auth.require(scopes_all=["ledger:write", "ledger:read"]))
    ]
    staff_dep = Annotated[Principal, Depends(auth.require(roles_any=["admin", "ops"]))]

    @app.get("/me")
    async def me(principal: principal_dep) -> dict[str, Any]:
        return {
            "subject": principal.subject,
            "roles": sorted(principal.roles),
            "scopes": sorted(principal.scopes),
            "session_id": principal.session_id,
        }

    @app.get("/balances")
    async def balances(principal: reader_dep) -> dict[str, str]:
        return {"subject": principal.subject}

    @app.post("/transfers")
    async def transfer(principal: writer_dep) -> dict[str, str]:
        return {"subject": principal.subject}

    @app.get("/admin")
    async def admin(principal: staff_dep) -> dict[str, str]:
        return {"subject": principal.subject}

    @app.get("/public")
    async def public() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture
async def client(minter):
    transport = httpx.ASGITransport(app=make_app(minter), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_valid_token_gives_the_principal(client, minter):
    token = minter.mint("user-1", roles=["trader"], scopes=["ledger:read"], sid="s-1")
    r = await client.get("/me", headers=bearer(token))
    assert r.status_code == 200
    assert r.json() == {
        "subject": "user-1",
        "roles": ["trader"],
        "scopes": ["ledger:read"],
        "session_id": "s-1",
    }
    assert (await client.get("/balances", headers=bearer(token))).status_code == 200


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_the_scheme_is_case_insensitive(client, minter, scheme):
    r = await client.get("/me", headers={"Authorization": f"{scheme} {minter.mint('u')}"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": ""}]
)
async def test_no_bearer_credentials_is_401_with_a_bare_challenge(client, headers):
    r = await client.get("/me", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "invalid_token"
    assert r.json()["status"] == 401


async def test_a_bad_token_is_401_invalid_token_and_is_never_echoed(client, minter):
    forged = TokenMinter(minter.issuer, minter.audience, kid=minter.kid).mint("admin")
    for value in (f"Bearer {forged}", "Bearer not-a-token", f"Bearer {forged} extra"):
        r = await client.get("/me", headers={"Authorization": value})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == CHALLENGE
        body = r.json()
        assert body["code"] == "invalid_token"
        assert body["detail"] == "the access token is not valid"
        assert set(body) == {"type", "title", "status", "detail", "code"}
        assert forged not in r.text
        assert forged.split(".")[1] not in r.text


async def test_an_expired_token_says_so(client, minter):
    expired = minter.mint("u", iat=1, exp=301)
    r = await client.get("/me", headers=bearer(expired))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == CHALLENGE
    assert r.json()["detail"] == "the access token has expired"


async def test_two_authorization_headers_are_401(client, minter):
    token = minter.mint("u")
    r = await client.get(
        "/me", headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    )
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == CHALLENGE


async def test_a_missing_scope_is_403_insufficient_scope(client, minter):
    token = minter.mint("u", scopes=["ledger:read"])
    r = await client.post("/transfers", headers=bearer(token))
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="ledger:read ledger:write"'
    )
    assert r.json()["code"] == "insufficient_scope"
    r = await client.get("/balances", headers=bearer(minter.mint("u")))
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="ledger:read"'
    token = minter.mint("u", scopes=["ledger:read", "ledger:write", "other"])
    assert (await client.post("/transfers", headers=bearer(token))).status_code == 200


async def test_roles_any_needs_one_of_the_roles(client, minter):
    r = await client.get("/admin", headers=bearer(minter.mint("u", roles=["trader"])))
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    assert r.json()["code"] == "insufficient_scope"
    for roles in (["ops"], ["admin"], ["trader", "ops"]):
        r = await client.get("/admin", headers=bearer(minter.mint("u", roles=roles)))
        assert r.status_code == 200


async def test_routes_without_the_dependency_stay_open(client):
    assert (await client.get("/public")).status_code == 200


async def test_unavailable_keys_are_503(minter):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with HttpJwks(f"http://127.0.0.1:{port}/jwks") as jwks:
        auth = BearerAuth(AccessTokenVerifier(jwks, issuer=minter.issuer, audience=minter.audience))
        transport = httpx.ASGITransport(app=make_app(minter, auth))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/me", headers=bearer(minter.mint("u")))
    assert r.status_code == 503
    assert r.json()["code"] == "keys_unavailable"


def test_openapi_shows_the_bearer_scheme_on_protected_routes(minter):
    schema = make_app(minter).openapi()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from the auth service.",
    }
    for path, method in (("/me", "get"), ("/balances", "get"), ("/transfers", "post")):
        assert schema["paths"][path][method]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/public"]["get"]
    # the internal credentials parameter is not part of the API
    assert "parameters" not in schema["paths"]["/me"]["get"]


def test_required_scopes_must_be_scope_tokens(minter):
    auth = BearerAuth(minter.verifier())
    for scope in ("two words", 'quo"te', "back\\slash", ""):
        with pytest.raises(ValueError, match="scope token"):
            auth.require(scopes_all=[scope])


def test_bearer_token_parsing():
    assert bearer_token(["Bearer abc.def.ghi"]) == "abc.def.ghi"
    assert bearer_token(["  bearer   abc  "]) == "abc"
    for values in ([], ["Basic x"], [""], ["Bearerabc"]):
        with pytest.raises(MissingToken):
            bearer_token(values)
    for values in (["Bearer"], ["Bearer a b"], ["Bearer a", "Bearer a"]):
        with pytest.raises(InvalidToken) as caught:
            bearer_token(values)
        assert type(caught.value) is InvalidToken

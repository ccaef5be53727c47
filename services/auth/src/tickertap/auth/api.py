"""The auth service's HTTP API: routes translate requests into `Auth` calls and back.

- `POST /v1/users` registers; `/v1/users/me` reads, changes (email), deletes the
  caller; `/v1/users/me/password`, `/v1/users/me/mfa/totp...`, `/v1/sessions`, `/v1/logout`.
- `POST /oauth/token` (RFC 6749, form-encoded): `password` (then, for MFA users,
  the `urn:tickertap:params:oauth:grant-type:mfa-otp` grant with the `mfa_token`),
  `refresh_token`, `client_credentials`; `POST /oauth/revoke` (RFC 7009).
- `GET /.well-known/jwks.json`, `GET /.well-known/oauth-authorization-server` (RFC 8414).
- `/v1/admin/...`: roles (admin), machine clients (admin), signing key rotation
  (admin); user lookup and audit trail (support or admin).

User routes also check that the token's session is active, so a logged-out,
revoked or deleted user's token is refused here at once (other services accept
it until it expires, at most `access_token_ttl_s`).
"""

# No `from __future__ import annotations`: FastAPI must read the annotations of the
# routes built inside `build_router`, and they name local aliases.

import base64
import binascii
import uuid
from typing import Annotated
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from tickertap.auth import domain as d
from tickertap.auth import schemas as s
from tickertap.auth.handlers import MFA_GRANT, Auth, RequestContext
from tickertap.authn import BearerAuth, InvalidToken, Principal, bearer_token

FORM_FIELDS_MAX = 16
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
GRANT_TYPES = ("password", "refresh_token", "client_credentials", MFA_GRANT)
FIELD_CHARS_MAX = 4096


async def get_auth(request: Request) -> Auth:
    auth = request.app.state.runtime.state["auth"]
    assert isinstance(auth, Auth)
    return auth


AuthDep = Annotated[Auth, Depends(get_auth)]


def context(request: Request) -> RequestContext:
    return RequestContext(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


ContextDep = Annotated[RequestContext, Depends(context)]


def oauth_error_response(error: d.OAuthError) -> JSONResponse:
    body: dict[str, object] = {"error": error.error, "error_description": error.description}
    body.update(error.extra)
    headers = dict(NO_STORE)
    if error.status == 401 and error.error == "invalid_client":
        headers["WWW-Authenticate"] = 'Basic realm="tickertap"'
    if "retry_after_s" in error.extra:
        headers["Retry-After"] = str(error.extra["retry_after_s"])
    return JSONResponse(body, status_code=error.status, headers=headers)


async def read_form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body; each field once (RFC 6749 section 3.2)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise d.OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        text = (await request.body()).decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=FORM_FIELDS_MAX
        )
    except (UnicodeDecodeError, ValueError):
        raise d.OAuthError("invalid_request", "the form cannot be read") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise d.OAuthError("invalid_request", f"the parameter {name} is repeated")
        if len(value) > FIELD_CHARS_MAX:
            raise d.OAuthError("invalid_request", f"the parameter {name} is too long")
        form[name] = value
    return form


def required(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise d.OAuthError("invalid_request", f"the parameter {name} is required")
    return value


def client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    """client_secret_basic (RFC 6749 section 2.3.1, form-encoded parts) or client_secret_post;
    not both."""
    header = request.headers.get("authorization")
    in_form = "client_secret" in form
    if header and header.lower().startswith("basic "):
        if in_form:
            raise d.OAuthError("invalid_request", "use one client authentication method")
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            client_id, secret = decoded.split(":", 1)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise d.OAuthError(
                "invalid_client", "unreadable client credentials", status=401
            ) from None
        return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))
    if in_form:
        return required(form, "client_id"), form["client_secret"]
    return None


def _form_body(fields: dict[str, str], required_fields: list[str]) -> dict[str, object]:
    """The OpenAPI request body of a form-encoded endpoint (read by `read_form`, not FastAPI)."""
    schema = {
        "type": "object",
        "properties": {
            name: {"type": "string", "description": doc} for name, doc in fields.items()
        },
        "required": required_fields,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": schema}},
        }
    }


TOKEN_FORM = _form_body(
    {
        "grant_type": f"one of {', '.join(GRANT_TYPES)}",
        "username": "password grant: the email",
        "password": "password grant",  # nosec B105  # OpenAPI field descriptions
        "refresh_token": "refresh_token grant",  # nosec B105  # as above
        "scope": "space-separated scopes (default: all the client may have)",
        "client_id": "client_credentials with client_secret_post",
        "client_secret": "client_credentials with client_secret_post",  # nosec B105  # as above
        "mfa_token": "MFA grant: from the mfa_required answer",  # nosec B105  # as above
        "otp": "MFA grant: the authenticator's code",
        "recovery_code": "MFA grant: a recovery code instead of otp",
    },
    ["grant_type"],
)
REVOKE_FORM = _form_body(
    {
        "token": "a refresh or access token",  # nosec B105  # OpenAPI field descriptions
        "token_type_hint": "ignored (RFC 7009)",
    },
    ["token"],
)


def build_router(bearer: BearerAuth) -> APIRouter:
    router = APIRouter()
    Anyone = Annotated[Principal, Depends(bearer.require())]
    Admin = Annotated[Principal, Depends(bearer.require(roles_any=["admin"]))]
    Support = Annotated[Principal, Depends(bearer.require(roles_any=["support", "admin"]))]

    # -- users -------------------------------------------------------------------------

    @router.post("/v1/users", status_code=201, tags=["users"])
    async def register(body: s.UserCreate, auth: AuthDep, ctx: ContextDep) -> s.UserPublic:
        return s.UserPublic.of(await auth.register(body.email, body.password, ctx))

    @router.get("/v1/users/me", tags=["users"])
    async def read_me(auth: AuthDep, principal: Anyone) -> s.UserPublic:
        return s.UserPublic.of(await auth.view(await auth.current_user(principal)))

    @router.patch("/v1/users/me", tags=["users"])
    async def change_email(
        body: s.EmailChange, auth: AuthDep, principal: Anyone, ctx: ContextDep
    ) -> s.UserPublic:
        return s.UserPublic.of(await auth.change_email(principal, body.email, body.password, ctx))

    @router.post("/v1/users/me/password", status_code=204, tags=["users"])
    async def change_password(
        body: s.PasswordChange, auth: AuthDep, principal: Anyone, ctx: ContextDep
    ) -> Response:
        await auth.change_password(principal, body.current_password, body.new_password, ctx)
        return Response(status_code=204)

    @router.delete("/v1/users/me", status_code=204, tags=["users"])
    async def delete_me(
        body: s.Reauthentication, auth: AuthDep, principal: Anyone, ctx: ContextDep
    ) -> Response:
        await auth.delete(principal, body.password, ctx)
        return Response(status_code=204)

    @router.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(auth: AuthDep, principal: Anyone) -> list[s.SessionPublic]:
        return [
            s.SessionPublic(
                id=r.id,
                created_at=r.created_at,
                last_used_at=r.last_used_at,
                expires_at=r.expires_at,
            )
            for r in await auth.sessions(principal)
        ]

    @router.post("/v1/logout", status_code=204, tags=["sessions"])
    async def logout(auth: AuthDep, principal: Anyone, ctx: ContextDep) -> Response:
        await auth.logout(principal, ctx)
        return Response(status_code=204)

    # -- MFA ---------------------------------------------------------------------------

    @router.post("/v1/users/me/mfa/totp", status_code=201, tags=["mfa"])
    async def enroll_totp(
        auth: AuthDep, principal: Anyone, ctx: ContextDep, response: Response
    ) -> s.TotpEnrollment:
        secret, uri = await auth.mfa_enroll(principal, ctx)
        response.headers.update(NO_STORE)
        return s.TotpEnrollment(secret=secret, otpauth_uri=uri)

    @router.post("/v1/users/me/mfa/totp/confirm", tags=["mfa"])
    async def confirm_totp(
        body: s.TotpConfirmation,
        auth: AuthDep,
        principal: Anyone,
        ctx: ContextDep,
        response: Response,
    ) -> s.RecoveryCodes:
        codes = await auth.mfa_confirm(principal, body.code, ctx)
        response.headers.update(NO_STORE)
        return s.RecoveryCodes(recovery_codes=codes)

    @router.delete("/v1/users/me/mfa/totp", status_code=204, tags=["mfa"])
    async def disable_totp(
        body: s.TotpDisable, auth: AuthDep, principal: Anyone, ctx: ContextDep
    ) -> Response:
        await auth.mfa_disable(principal, body.password, body.code, ctx)
        return Response(status_code=204)

    # -- OAuth 2 -----------------------------------------------------------------------

    @router.post("/oauth/token", tags=["oauth"], openapi_extra=TOKEN_FORM)
    async def token(request: Request, auth: AuthDep, ctx: ContextDep) -> JSONResponse:
        """RFC 6749 token endpoint (form-encoded); RFC 6749 section 5.2 errors."""
        try:
            form = await read_form(request)
            grant = required(form, "grant_type")
            scope = form.get("scope") or None
            if grant == "password":
                pair = await auth.password_grant(
                    required(form, "username"), required(form, "password"), scope, ctx
                )
            elif grant == "refresh_token":
                pair = await auth.refresh_grant(required(form, "refresh_token"), scope, ctx)
            elif grant == "client_credentials":
                credentials = client_credentials(request, form)
                if credentials is None:
                    raise d.OAuthError("invalid_client", "client authentication failed", status=401)
                pair = await auth.client_grant(*credentials, scope, ctx)
            elif grant == MFA_GRANT:
                pair = await auth.mfa_grant(
                    required(form, "mfa_token"), form.get("otp"), form.get("recovery_code"), ctx
                )
            else:
                raise d.OAuthError(
                    "unsupported_grant_type", f"grant types: {', '.join(GRANT_TYPES)}"
                )
        except d.OAuthError as error:
            return oauth_error_response(error)
        return JSONResponse(pair.body(), headers=NO_STORE)

    @router.post("/oauth/revoke", tags=["oauth"], openapi_extra=REVOKE_FORM)
    async def revoke(request: Request, auth: AuthDep, ctx: ContextDep) -> Response:
        """RFC 7009: 200 whether or not the token was known."""
        try:
            form = await read_form(request)
            token = required(form, "token")
        except d.OAuthError as error:
            return oauth_error_response(error)
        principal: Principal | None = None
        if token.count(".") == 2:  # an access token: honoured only when it verifies
            try:
                principal = await bearer_verify(auth, token)
            except InvalidToken:
                principal = None
        await auth.revoke_token(token, principal, ctx)
        return Response(status_code=200, headers=NO_STORE)

    @router.get("/.well-known/jwks.json", tags=["oauth"])
    async def jwks(auth: AuthDep) -> JSONResponse:
        return JSONResponse(
            await auth.keys.jwks(),
            headers={"Cache-Control": f"public, max-age={auth.settings.jwks_max_age_s}"},
        )

    @router.get("/.well-known/oauth-authorization-server", tags=["oauth"])
    async def metadata(request: Request, auth: AuthDep) -> dict[str, object]:
        base = str(request.base_url).rstrip("/")
        return {
            "issuer": auth.settings.auth_issuer,
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "grant_types_supported": list(GRANT_TYPES),
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "scopes_supported": sorted(d.allowed_scopes(d.ROLES)),
        }

    # -- administration ----------------------------------------------------------------

    @router.post("/v1/admin/users/{user_id}/roles/{role}", tags=["admin"])
    async def grant_role(
        user_id: uuid.UUID, role: str, auth: AuthDep, admin: Admin, ctx: ContextDep
    ) -> s.UserPublic:
        return s.UserPublic.of(await auth.set_role(admin, user_id, role, True, ctx))

    @router.delete("/v1/admin/users/{user_id}/roles/{role}", tags=["admin"])
    async def revoke_role(
        user_id: uuid.UUID, role: str, auth: AuthDep, admin: Admin, ctx: ContextDep
    ) -> s.UserPublic:
        return s.UserPublic.of(await auth.set_role(admin, user_id, role, False, ctx))

    @router.get("/v1/admin/users/{user_id}", tags=["admin"])
    async def read_user(user_id: uuid.UUID, auth: AuthDep, principal: Support) -> s.UserPublic:
        return s.UserPublic.of(await auth.user_for_support(principal, user_id))

    @router.get("/v1/admin/users/{user_id}/audit", tags=["admin"])
    async def read_audit(
        user_id: uuid.UUID,
        auth: AuthDep,
        principal: Support,
        after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[s.AuditEntry]:
        rows = await auth.audit_trail(
            principal, user_id, after_id, min(limit, auth.settings.audit_page_max)
        )
        return [
            s.AuditEntry(
                id=r.id,
                occurred_at=r.occurred_at,
                actor_id=r.actor_id,
                subject_id=r.subject_id,
                action=r.action,
                result=r.result,
                ip=r.ip,
                user_agent=r.user_agent,
                details=r.details,
            )
            for r in rows
        ]

    @router.post("/v1/admin/clients", status_code=201, tags=["admin"])
    async def create_client(
        body: s.ClientCreate, auth: AuthDep, admin: Admin, ctx: ContextDep, response: Response
    ) -> s.ClientCreated:
        secret = await auth.create_client(admin, body.client_id, body.scopes, body.roles, ctx)
        response.headers.update(NO_STORE)
        return s.ClientCreated(client_id=body.client_id, client_secret=secret)

    @router.post("/v1/admin/signing-keys/rotate", tags=["admin"])
    async def rotate_signing_key(
        auth: AuthDep, admin: Admin, ctx: ContextDep
    ) -> s.SigningKeyRotated:
        return s.SigningKeyRotated(kid=await auth.rotate_signing_key(admin, ctx))

    async def bearer_verify(auth: Auth, token: str) -> Principal:
        return await auth.verifier.verify(bearer_token([f"Bearer {token}"]))

    return router

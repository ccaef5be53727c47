"""A short path for a service's hottest routes, past Starlette's and FastAPI's routing.

FastAPI's request path (exception middleware, the router trying each route's pattern,
the included-router contexts, the per-request exit stacks and dependency solving) costs
more CPU than a whole group-committed transfer's own Python. A route whose endpoint is
marked `@direct` is served by `DirectRoutes` instead: it takes only the `Request`, reads
its own headers and body, and returns a `Response`. FastAPI still declares the route,
so its OpenAPI entry is unchanged and it stays the fallback (other methods on the same
path, a trailing slash, a mount prefix all go the usual way).

`DirectRoutes` sits inside the service's own middleware (`ObservabilityMiddleware`,
`BodySizeLimit`), so the correlation id, the latency metric (it records the route as
the router would) and the body bound apply as before. An exception with a handler on
the app (`ServiceError`, `RequestValidationError`, ...) gets that handler's response,
as Starlette's `ExceptionMiddleware` would give it; any other one propagates to
`ServerErrorMiddleware` and its `Exception` handler, as it did.

Only paths without parameters are served here: one dictionary lookup per request.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

DirectEndpoint = Callable[[Request], Awaitable[Response]]
E = TypeVar("E", bound=DirectEndpoint)

_MARK: Final = "__tickertap_direct__"


def direct(endpoint: E) -> E:
    """Mark a route's endpoint to be served by `DirectRoutes`: `async def f(request) ->
    Response`, on a path without parameters (checked when the app's routes are indexed)."""
    setattr(endpoint, _MARK, True)
    return endpoint


class DirectRoutes:
    """See the module docstring; `app.add_middleware(DirectRoutes)` innermost."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._owner: Any = None  # the FastAPI app whose routes `_routes` indexes
        self._routes: dict[tuple[str, str], APIRoute] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            owner = scope.get("app")
            if owner is not self._owner:
                self._index(owner)
            route = self._routes.get((scope["method"], scope["path"]))
            if route is not None:
                await self._serve(route, owner, scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _index(self, owner: Any) -> None:
        routes: dict[tuple[str, str], APIRoute] = {}
        for context in iter_route_contexts(getattr(owner, "routes", ())):
            route = context.original_route
            path = context.path_format
            if not isinstance(route, APIRoute) or not getattr(route.endpoint, _MARK, False):
                continue
            if path is None or "{" in path:
                raise ValueError(f"a direct route has no path parameters: {path}")
            for method in context.methods or ():
                routes[(method, path)] = route
        self._routes = routes
        self._owner = owner

    @staticmethod
    async def _serve(
        route: APIRoute, owner: Any, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # what the router records: the metrics middleware labels the request by it
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = _handler(owner, exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)


def _handler(owner: Any, exc: Exception) -> Any:
    """The app's handler for `exc` as Starlette's `ExceptionMiddleware` finds it (an
    HTTPException's status first, then the class or its nearest base), but not the
    catch-all `Exception` one, which `ServerErrorMiddleware` runs (and which re-raises)."""
    handlers = getattr(owner, "exception_handlers", {})
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None

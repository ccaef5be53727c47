"""Per-request correlation id and latency metrics, as a pure ASGI middleware.

    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

For each HTTP request it takes the `X-Correlation-ID` header when well formed (else it
makes a new UUID4), binds it for the request, returns it in the response headers,
counts the request in flight and records its latency by method, ROUTE TEMPLATE
(`/v1/accounts/{account_id}`) and status code. Requests that match no route are
labelled `unmatched`, and at most `route_labels_max` distinct templates are kept
(later ones are labelled `other`), so the label sets stay bounded whatever clients send.

Added with `add_middleware` it runs inside Starlette's ServerErrorMiddleware: the 500
that middleware sends for an unhandled exception then lacks the header (the error is
logged here, with the correlation id). Wrapping the whole app instead,
`ObservabilityMiddleware(app, metrics)`, covers that response and the app's
`Exception` handlers too.

The health router's own routes are recorded like any other route: each is its own
series, so probes and scrapes do not distort the API's latency, and a slow `/readyz`
(a slow dependency) or a failing `/metrics` is visible. Pass `excluded_routes` to
drop them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any, Final

from fastapi.routing import RouteContext, iter_route_contexts
from prometheus_client import Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tickertap.observability.correlation import (
    CORRELATION_ID_HEADER,
    coerce_correlation_id,
    correlation_id,
)
from tickertap.observability.metrics import Metrics

ROUTE_UNMATCHED: Final = "unmatched"
ROUTE_OTHER: Final = "other"
METHOD_OTHER: Final = "other"
ROUTE_LABELS_MAX: Final = 256
STATUS_CLIENT_CLOSED: Final = 499
"""Status label of a request cancelled before it answered (the client went away)."""

_HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"}
)
_HEADER: Final = CORRELATION_ID_HEADER.lower().encode("ascii")
_APP_INDEXES_MAX: Final = 32

_logger = logging.getLogger("tickertap.observability.http")


class ObservabilityMiddleware:
    """See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        *,
        excluded_routes: Collection[str] = (),
        route_labels_max: int = ROUTE_LABELS_MAX,
    ) -> None:
        assert route_labels_max > 0, route_labels_max
        self.app = app
        self.metrics = metrics
        self.excluded_routes = frozenset(excluded_routes)
        self.route_labels_max = route_labels_max
        self._route_labels: set[str] = set()
        self._latency: dict[tuple[str, str, int], Histogram] = {}
        self._indexes: dict[int, _RouteIndex] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        value = coerce_correlation_id(_header(scope, _HEADER))
        header_value = value.encode("ascii")
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER]
                headers.append((_HEADER, header_value))
                # A copy: a Response object may be sent more than once.
                message = {**message, "headers": headers}
            await send(message)

        entry_root_path: str = scope.get("root_path", "")
        entry_app = scope.get("app")
        error: Exception | None = None
        token = correlation_id.set(value)
        in_flight = self.metrics.http_requests_in_flight
        in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or STATUS_CLIENT_CLOSED
            raise
        except Exception as exc:
            status = status or 500
            error = exc
            raise
        finally:
            duration_s = time.perf_counter() - started
            in_flight.dec()
            try:
                self._observe(scope, entry_root_path, entry_app, status or 500, duration_s, error)
            finally:
                correlation_id.reset(token)

    def _observe(
        self,
        scope: Scope,
        entry_root_path: str,
        entry_app: Any,
        status: int,
        duration_s: float,
        error: Exception | None,
    ) -> None:
        method = scope["method"] if scope["method"] in _HTTP_METHODS else METHOD_OTHER
        route = self._route_label(scope, entry_root_path, entry_app, status)
        if error is not None:
            _logger.error(
                "unhandled exception",
                exc_info=error,
                extra={"method": method, "route": route, "status": status},
            )
        if route in self.excluded_routes:
            return
        key = (method, route, status)
        child = self._latency.get(key)
        if child is None:
            child = self.metrics.http_request_duration.labels(method, route, str(status))
            self._latency[key] = child
        child.observe(duration_s)

    def _route_label(self, scope: Scope, entry_root_path: str, entry_app: Any, status: int) -> str:
        try:
            template = self._route_template(scope, entry_root_path, entry_app, status)
        except Exception:  # a label is never worth failing a request for
            _logger.warning("route template lookup failed", exc_info=True)
            template = None
        if template is None:
            return ROUTE_UNMATCHED
        if template not in self._route_labels:
            if len(self._route_labels) >= self.route_labels_max:
                return ROUTE_OTHER
            self._route_labels.add(template)
        return template

    def _route_template(
        self, scope: Scope, entry_root_path: str, entry_app: Any, status: int
    ) -> str | None:
        route = scope.get("route")
        if route is not None:
            # Fast path: the router recorded the route it chose. FastAPI keeps the
            # route object of an included router, whose own path lacks the include
            # prefixes; the app's route index gives the full template.
            app = scope.get("app")
            index = self._index(app) if app is not None else None
            template = index.template_of(route, scope) if index is not None else None
            if template is None:
                template = getattr(route, "path_format", None)
            if template is None:
                return None
            root_path: str = scope.get("root_path", "")
            if root_path != entry_root_path and root_path.startswith(entry_root_path):
                template = root_path[len(entry_root_path) :] + template  # inside a Mount
            return template
        if status == 404:
            return None
        # Slow path (e.g. a Mount of a plain ASGI app, which records no route): match
        # the request against the top-level app's routes as it arrived.
        app = entry_app if entry_app is not None else scope.get("app")
        if app is None or not hasattr(app, "routes"):
            app = self.app
        index = self._index(app)
        if index is None:
            return None
        return index.match({**scope, "root_path": entry_root_path})

    def _index(self, app: Any) -> _RouteIndex | None:
        index = self._indexes.get(id(app))
        if index is not None and index.app is app:
            return index
        routes = getattr(app, "routes", None)
        if not isinstance(routes, Sequence):
            return None
        if len(self._indexes) >= _APP_INDEXES_MAX:
            self._indexes.clear()
        index = _RouteIndex(app, routes)
        self._indexes[id(app)] = index
        return index


class _RouteIndex:
    """The full route templates of one app, built once, on its first request.

    Routes added after that are labelled by their own path (without include prefixes).
    """

    def __init__(self, app: Any, routes: Sequence[Any]) -> None:
        self.app = app
        self.contexts: list[RouteContext] = list(iter_route_contexts(routes))
        self.by_route: dict[int, list[RouteContext]] = {}
        for context in self.contexts:
            self.by_route.setdefault(id(context.original_route), []).append(context)

    def template_of(self, route: Any, scope: Scope) -> str | None:
        contexts = self.by_route.get(id(route))
        if not contexts or contexts[0].original_route is not route:
            return None
        if len(contexts) == 1:
            return contexts[0].path_format
        # The same route included under several prefixes: find which one matched.
        return _match(contexts, scope)

    def match(self, scope: Scope) -> str | None:
        return _match(self.contexts, scope)


def _match(contexts: Sequence[RouteContext], scope: Scope) -> str | None:
    partial: str | None = None
    for context in contexts:
        match, _ = context.matches(scope)
        if match is Match.FULL:
            return context.path_format
        if match is Match.PARTIAL and partial is None:
            partial = context.path_format
    return partial


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None

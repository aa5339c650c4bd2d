"""The HTTP API: one Server (limits, API key, models, metrics, byte budget) and the Starlette app over its routes.

The event loop parses, checks and waits; it never decodes an image or runs a model (the batchers' threads
do), and large bodies are parsed in a thread too. Order of checks in a request: API key, readiness, body
size (streamed against a counter), JSON, fields and input count, each input (what it is, base64, URL
policy), queue room. Only then is work queued, so a request refused for any reason has cost no decode or
inference.
"""

from __future__ import annotations

import contextlib
from typing import Any, Awaitable, Callable, Sequence

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import routes
from .auth import ApiKey
from .context import Context
from .errors import INVALID, error_response, json_error
from .health import Prober, health
from .lifecycle import Models
from .limits import ByteBudget, Limits
from .metrics import Measured, Metrics
from .models import ModelSource
from .urls import UrlFetcher

__all__ = ["Server", "create_app", "ROUTES"]

Handler = Callable[[Context, Request], Awaitable[Response]]

# path, method, handler, public (answered without the API key: probes from an orchestrator)
ROUTES: tuple[tuple[str, str, Handler, bool], ...] = (
    ("/v1/embeddings", "POST", routes.embeddings, False),
    ("/v1/classify", "POST", routes.classify, False),
    ("/v1/models", "GET", routes.list_models, False),
    ("/health", "GET", health, True),
    ("/ready", "GET", routes.ready, True),
    ("/metrics", "GET", routes.metrics, False),
)


class Server:
    """The state of one server; `app` is its ASGI app.

    The models load when the app starts, on a thread (/health answers meanwhile, /ready says "loading"),
    unless `load()` ran first: the CLI loads them before it binds the socket, so a model that cannot load
    fails the command before anything listens.
    """

    def __init__(self, sources: Sequence[ModelSource], limits: Limits | None = None, *, api_key: str | None = None,
                 load_options: dict | None = None, on_load_error: Callable[[BaseException], None] | None = None):
        self.limits = limits or Limits()
        self.api_key = ApiKey(api_key)
        self.metrics = Metrics()
        self.budget = ByteBudget(self.limits.max_inflight_bytes)
        self.models = Models(sources, self.limits, self.metrics, load_options or {})
        self.fetcher = UrlFetcher(self.limits)
        self.prober = Prober(self.models)
        self.on_load_error = on_load_error
        starlette = Starlette(routes=[Route(path, self._endpoint(handler, public), methods=[method])
                                      for path, method, handler, public in ROUTES],
                              lifespan=self._lifespan, exception_handlers={HTTPException: _http_exception})
        self.app = Measured(starlette, self.metrics)

    def load(self) -> None:
        """Load every model now (raises the first failure)."""
        self.models.load()

    def close(self) -> None:
        self.models.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.models.load_in_background(self.on_load_error)
        try:
            yield
        finally:
            await self.fetcher.close()
            await anyio.to_thread.run_sync(self.close)

    def _endpoint(self, handler: Handler, public: bool):
        async def endpoint(request: Request) -> Response:
            try:
                if not public:
                    self.api_key.check(request)
                response = await handler(self, request)
            except Exception as exc:  # noqa: BLE001 - errors.py answers each kind; an unknown one is a logged 500
                response = error_response(exc, where=f"{request.method} {request.url.path}",
                                          retry_after=self.limits.retry_after, metrics=self.metrics)
            if response.status_code >= 400 and request.method == "POST" and not getattr(request.state, "body_read", False):
                # The body was refused unread: closing the connection stops the server reading it (uvicorn
                # would otherwise read and discard it until the keep-alive timeout).
                response.headers["Connection"] = "close"
            return response

        return endpoint


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 / 405, in the same JSON shape."""
    return json_error(exc.status_code, exc.detail, INVALID, headers=getattr(exc, "headers", None))


def create_app(sources: Sequence[ModelSource], limits: Limits | None = None, **options: Any):
    """The ASGI app serving `sources` (see Server for the options); `app.server` is its Server."""
    server = Server(sources, limits, **options)
    server.app.server = server
    return server.app

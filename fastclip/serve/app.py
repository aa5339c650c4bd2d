"""The HTTP API: Starlette routes over the batchers. The event loop parses, checks and waits; it never decodes
an image or runs a model (the batchers' threads do), and large bodies are parsed in a thread too.

Order of checks in a request: API key, readiness, body size (streamed against a counter), JSON, fields and
input count, each input (base64, URL policy), queue room. Only then is work queued, so a request refused
for any reason has cost no decode or inference.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Sequence

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import first_line
from .batcher import Batcher, QueueFull
from .inputs import BadRequest, InputError, fetch_url, image_bytes, parse_classify, parse_embeddings
from .limits import Busy, ByteBudget, Limits, SlowBody, TooLarge
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .models import ModelSource, ServedModel, classify_probabilities, load_model

log = logging.getLogger("fastclip.serve")

__all__ = ["Server", "create_app"]

THREAD_PARSE_BYTES = 1 << 20  # bodies past this are parsed off the event loop (json.loads: ~10 ms per MiB)
PROBE_AFTER = 10.0  # /health sends a probe input through an idle tower whose last batch is older than this


class Unauthorized(Exception):
    pass


class NotReady(Exception):
    pass


class ClientGone(Exception):
    pass


class GatewayTimeout(Exception):
    pass


def _error(status: int, message: str, kind: str, *, code: str | None = None, param: str | None = None,
           index: int | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    if index is not None:
        body["index"] = index
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or first_line(exc)


class Server:
    """The state of one server: its limits, models, metrics and byte budget; `app` is the ASGI app."""

    def __init__(self, sources: Sequence[ModelSource], limits: Limits | None = None, *, api_key: str | None = None,
                 load_options: dict | None = None, on_load_error: Callable[[BaseException], None] | None = None):
        if not sources:
            raise ValueError("serve at least one model")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"two models share a name: {names}; name them with --model NAME=PATH")
        self.sources = list(sources)
        self.limits = limits or Limits()
        # Only a digest of the key is kept, and compared in constant time: the key itself is never logged.
        self._key_digest = hashlib.sha256(f"Bearer {api_key}".encode()).digest() if api_key else None
        self.load_options = load_options or {}
        self.on_load_error = on_load_error
        self.metrics = Metrics()
        self.budget = ByteBudget(self.limits.max_inflight_bytes)
        self.models: dict[str, ServedModel] = {}
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._loader: threading.Thread | None = None
        self._url_client = None
        self._probe_lock: asyncio.Lock | None = None
        self._probe_image = _probe_image()
        routes = [
            Route("/v1/embeddings", self._endpoint(self.embeddings), methods=["POST"]),
            Route("/v1/classify", self._endpoint(self.classify), methods=["POST"]),
            Route("/v1/models", self._endpoint(self.list_models), methods=["GET"]),
            Route("/health", self._endpoint(self.health, public=True), methods=["GET"]),
            Route("/ready", self._endpoint(self.ready_check, public=True), methods=["GET"]),
            Route("/metrics", self._endpoint(self.render_metrics), methods=["GET"]),
        ]
        starlette = Starlette(routes=routes, lifespan=self._lifespan,
                              exception_handlers={HTTPException: self._http_exception})
        self.app = _Measured(starlette, self.metrics)

    # ---------------------------------------------------------------------------------- lifecycle

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self._probe_lock = asyncio.Lock()
        self._loader = threading.Thread(target=self._load, name="fastclip-serve-load", daemon=True)
        self._loader.start()
        try:
            yield
        finally:
            if self._url_client is not None:
                await self._url_client.aclose()
            await anyio.to_thread.run_sync(self.close)

    def _load(self) -> None:
        try:
            for source in self.sources:
                started = time.monotonic()
                self.models[source.name] = load_model(source, self.limits, self.metrics, **self.load_options)
                log.info("fastclip serve: model %r loaded from %s in %.1f s", source.name,
                         self.models[source.name].folder, time.monotonic() - started)
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported on /ready and to the CLI, which exits 1
            self.load_error = first_line(exc)
            log.error("fastclip serve: cannot load the models: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(exc)

    def close(self) -> None:
        if self._loader is not None:
            self._loader.join(timeout=60)
        for model in self.models.values():
            model.close()

    # ------------------------------------------------------------------------------ request plumbing

    def _endpoint(self, handler: Callable[[Request], Awaitable[Response]], public: bool = False):
        """Every route's errors as JSON (OpenAI's error shape); an unexpected one is logged, never sent."""

        async def endpoint(request: Request) -> Response:
            response = await answer(request)
            if response.status_code >= 400 and request.method == "POST" and not getattr(request.state, "body_read", False):
                # The body was refused unread: closing the connection stops the server reading it (uvicorn
                # would otherwise read and discard it until the keep-alive timeout).
                response.headers["Connection"] = "close"
            return response

        async def answer(request: Request) -> Response:
            try:
                if not public:
                    self._authorize(request)
                return await handler(request)
            except Unauthorized:
                return _error(401, "missing or wrong API key: send Authorization: Bearer KEY",
                              "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            except NotReady as exc:
                return _error(503, str(exc), "server_error", code="not_ready",
                              headers={"Retry-After": str(self.limits.retry_after)})
            except BadRequest as exc:
                return _error(exc.status, exc.message, "invalid_request_error", code=exc.code, param=exc.param)
            except InputError as exc:
                return _error(400, str(exc), "invalid_request_error", code="invalid_input", param="input",
                              index=exc.index)
            except TooLarge as exc:
                self.metrics.rejected.labels("too_large").inc()
                return _error(413, str(exc), "invalid_request_error", code="too_large")
            except (Busy, QueueFull) as exc:
                self.metrics.rejected.labels("busy").inc()
                return _error(503, f"server busy: {exc}; retry later", "server_error", code="overloaded",
                              headers={"Retry-After": str(self.limits.retry_after)})
            except SlowBody as exc:
                return _error(408, str(exc), "invalid_request_error", code="body_timeout")
            except GatewayTimeout as exc:
                return _error(504, str(exc), "server_error", code="timeout")
            except ClientGone:
                return Response(status_code=499)  # nobody reads it; uvicorn drops it
            except Exception:  # noqa: BLE001 - the traceback goes to the log, not to the caller
                log.exception("fastclip serve: %s %s failed", request.method, request.url.path)
                return _error(500, "internal server error (see the server log)", "server_error", code="internal")

        return endpoint

    async def _http_exception(self, request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail, "invalid_request_error", headers=getattr(exc, "headers", None))

    def _authorize(self, request: Request) -> None:
        if self._key_digest is None:
            return
        given = hashlib.sha256(request.headers.get("authorization", "").encode("utf-8", "replace")).digest()
        if not hmac.compare_digest(given, self._key_digest):
            raise Unauthorized()

    def _check_ready(self) -> None:
        if not self.ready.is_set():
            raise NotReady(f"models failed to load: {self.load_error}" if self.load_error else "models are loading")

    @contextlib.asynccontextmanager
    async def _body(self, request: Request):
        """The request body, read as a stream against max_body_bytes and the byte budget; never buffered past
        the limit: on 413 the rest is not read and the connection is closed."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise BadRequest("malformed Content-Length")
            if int(declared) > limit:
                raise TooLarge(f"request body of {int(declared)} bytes; the limit is {limit} (--max-body-mb)")
        held = 0
        try:
            chunks = []
            try:
                with anyio.fail_after(self.limits.body_timeout or None):
                    async for chunk in request.stream():
                        if held + len(chunk) > limit:
                            raise TooLarge(f"request body over {limit} bytes (--max-body-mb)")
                        self.budget.take(len(chunk))
                        held += len(chunk)
                        chunks.append(chunk)
            except TimeoutError:
                raise SlowBody(f"the request body did not arrive within {self.limits.body_timeout:g} s "
                               "(--body-timeout)") from None
            body = b"".join(chunks)
            chunks.clear()
            request.state.body_read = True
            yield body
        finally:
            self.budget.give(held)

    async def _parse_json(self, body: bytes) -> Any:
        def parse() -> Any:
            try:
                return json.loads(body)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise BadRequest(f"malformed JSON: {first_line(exc)[:200]}", code="invalid_json") from None

        if not body:
            raise BadRequest("empty body: send a JSON object", code="invalid_json")
        return await anyio.to_thread.run_sync(parse) if len(body) > THREAD_PARSE_BYTES else parse()

    def _model(self, name: str | None) -> ServedModel:
        self._check_ready()
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise BadRequest(f"this server holds {len(self.models)} models: name one of {sorted(self.models)}",
                             param="model")
        model = self.models.get(name)
        if model is None:
            raise BadRequest(f"model {name!r} is not served here (GET /v1/models lists them)", param="model",
                             code="model_not_found", status=404)
        return model

    def _batcher(self, model: ServedModel, modality: str) -> Batcher:
        batcher = model.batchers.get(modality)
        if batcher is None:
            raise BadRequest(f"model {model.name!r} has no {modality} tower (it embeds {', '.join(model.modalities)})",
                             param="modality")
        return batcher

    async def _images(self, inputs: list, big: bool) -> tuple[list, dict[int, InputError]]:
        """(bytes per input or None, {index: InputError}): base64 decoded (in a thread for large bodies),
        URLs fetched with their limits when allowed."""
        def decode() -> tuple[list, dict[int, InputError]]:
            items, failures = [], {}
            for i, value in enumerate(inputs):
                try:
                    items.append(image_bytes(value, i, self.limits))
                except InputError as exc:
                    items.append(None)
                    failures[i] = exc
            return items, failures

        items, failures = await anyio.to_thread.run_sync(decode) if big else decode()
        urls = [i for i, item in enumerate(items) if isinstance(item, str)]
        if urls:
            client = self._client()

            async def get(i: int) -> None:
                try:
                    items[i] = await fetch_url(client, items[i], i, self.limits)
                except InputError as exc:
                    items[i] = None
                    failures[i] = exc

            async with anyio.create_task_group() as group:
                for i in urls:
                    group.start_soon(get, i)
        return items, failures

    def _client(self):
        if self._url_client is None:
            import httpx

            self._url_client = httpx.AsyncClient(follow_redirects=True, max_redirects=3,
                                                 timeout=httpx.Timeout(self.limits.url_timeout),
                                                 limits=httpx.Limits(max_connections=16))
        return self._url_client

    async def _run(self, request: Request, work: Sequence[tuple[Batcher, list]]) -> list[list]:
        """Queue each (batcher, items) and wait for all rows; the client hanging up cancels what is still queued."""
        loop = asyncio.get_running_loop()
        jobs = []
        try:
            for batcher, items in work:
                jobs.append((batcher, batcher.submit(items, loop)))
        except QueueFull:
            for batcher, job in jobs:
                batcher.cancel(job)
            raise
        gone = asyncio.ensure_future(_disconnected(request))
        everything = asyncio.ensure_future(asyncio.gather(*(job.future for _, job in jobs)))
        finished = False
        try:
            done, _ = await asyncio.wait({everything, gone}, timeout=self.limits.request_timeout or None,
                                         return_when=asyncio.FIRST_COMPLETED)
            if everything in done:
                rows = everything.result()  # a failed batch raises here (500)
                finished = True
                return rows
            if gone in done:
                raise ClientGone()
            raise GatewayTimeout(f"no answer within {self.limits.request_timeout:g} s (--request-timeout)")
        finally:
            gone.cancel()
            if not finished:  # whatever ended the wait, the inputs still queued are nobody's now
                for batcher, job in jobs:
                    batcher.cancel(job)
                if not everything.done():
                    everything.cancel()
                everything.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _count(self, model: ServedModel, tower: str, ok: int, failed: int) -> None:
        if ok:
            self.metrics.inputs.labels(model.name, tower, "ok").inc(ok)
        if failed:
            self.metrics.inputs.labels(model.name, tower, "failed").inc(failed)

    # ---------------------------------------------------------------------------------------- routes

    async def _inputs(self, inputs: list, modality: str, errors: str, big: bool) -> tuple[list, dict, list[int]]:
        """(items, {index: InputError}, indices to embed): images decoded to bytes or fetched, texts type-checked;
        with errors="raise" the lowest failing index answers 400 before anything is queued."""
        if modality == "image":
            items, failures = await self._images(inputs, big)
        else:
            items = inputs
            failures = {i: InputError(i, f"expected a string, got {type(t).__name__}")
                        for i, t in enumerate(items) if not isinstance(t, str)}
        if failures and errors == "raise":
            raise failures[min(failures)]
        return items, failures, [i for i in range(len(items)) if i not in failures]

    def _results(self, model: ServedModel, tower: str, count: int, failures: dict, good: list[int], rows: list,
                 errors: str) -> list:
        """One vector or error per input, in input order; with errors="raise" the lowest failing index answers 400."""
        results: list[Any] = [None] * count
        for i, exc in failures.items():
            results[i] = exc
        for i, row in zip(good, rows):
            results[i] = row
        bad = [i for i, r in enumerate(results) if not isinstance(r, np.ndarray)]
        self._count(model, tower, count - len(bad), len(bad))
        if bad and errors == "raise":
            raise InputError(bad[0], _reason(results[bad[0]]))
        return results

    async def embeddings(self, request: Request) -> Response:
        self._check_ready()
        async with self._body(request) as body:
            req = parse_embeddings(await self._parse_json(body), self.limits)
            model = self._model(req.model)
            batcher = self._batcher(model, req.modality)
            if req.dimensions is not None and req.dimensions != model.dim:
                raise BadRequest(f"dimensions: this model gives {model.dim}-d vectors (no shortening)",
                                 param="dimensions")
            items, failures, good = await self._inputs(req.inputs, req.modality, req.errors,
                                                       len(body) > THREAD_PARSE_BYTES)
            (rows,) = await self._run(request, [(batcher, [items[i] for i in good])])
        results = self._results(model, req.modality, len(items), failures, good, rows, req.errors)

        def render() -> bytes:
            data = []
            for i, r in enumerate(results):
                if isinstance(r, np.ndarray):
                    vector = (base64.b64encode(r.astype("<f4").tobytes()).decode("ascii")
                              if req.encoding_format == "base64" else r.tolist())
                    data.append({"object": "embedding", "index": i, "embedding": vector})
                else:
                    data.append({"object": "embedding", "index": i, "embedding": None, "error": _reason(r)})
            return json.dumps({"object": "list", "data": data, "model": model.name,
                               "usage": {"prompt_tokens": 0, "total_tokens": 0}}, separators=(",", ":")).encode()

        content = await anyio.to_thread.run_sync(render) if len(results) > 64 else render()
        return Response(content, media_type="application/json")

    async def classify(self, request: Request) -> Response:
        self._check_ready()
        async with self._body(request) as body:
            req = parse_classify(await self._parse_json(body), self.limits)
            model = self._model(req.model)
            if model.clip is None:
                raise BadRequest(f"model {model.name!r} does not hold both towers: it cannot classify", param="model")
            items, failures, good = await self._inputs(req.inputs, "image", req.errors, len(body) > THREAD_PARSE_BYTES)
            prompts = [req.template.format(label) for label in req.labels]
            image_rows, prompt_rows = await self._run(request, [(model.batchers["image"], [items[i] for i in good]),
                                                                (model.batchers["text"], prompts)])
        for k, row in enumerate(prompt_rows):
            if not isinstance(row, np.ndarray):
                raise BadRequest(f"label {k}: {_reason(row)}", param="labels")
        results = self._results(model, "image", len(items), failures, good, image_rows, req.errors)
        ok = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
        probs = np.empty((0, len(req.labels)), np.float32)
        if ok:
            probs = await anyio.to_thread.run_sync(
                classify_probabilities, model.clip, np.stack([results[i] for i in ok]), req.labels, req.template,
                np.stack(prompt_rows))
        rows = dict(zip(ok, probs))
        data = []
        for i, r in enumerate(results):
            if i in rows:
                p = rows[i]
                data.append({"object": "classification", "index": i, "probs": p.tolist(),
                             "label": req.labels[int(np.argmax(p))]})
            else:
                data.append({"object": "classification", "index": i, "probs": None, "label": None, "error": _reason(r)})
        return JSONResponse({"object": "list", "data": data, "labels": req.labels, "model": model.name})

    async def list_models(self, request: Request) -> Response:
        self._check_ready()
        return JSONResponse({"object": "list", "data": [m.describe() for m in self.models.values()]})

    async def ready_check(self, request: Request) -> Response:
        if self.ready.is_set():
            return JSONResponse({"status": "ready", "models": list(self.models)})
        status = "failed" if self.load_error else "loading"
        return JSONResponse({"status": status, "error": self.load_error}, status_code=503,
                            headers={"Retry-After": str(self.limits.retry_after)})

    async def health(self, request: Request) -> Response:
        """Alive and working: every worker thread alive, no batch running past stall_timeout, and a tower
        idle for a while answers one probe input through its real queue within the same limit."""
        if self.load_error:
            return JSONResponse({"status": "failed", "error": self.load_error}, status_code=503)
        if not self.ready.is_set():
            return JSONResponse({"status": "loading"})  # alive; /ready tells traffic to wait
        stall = self.limits.stall_timeout
        problems = [p for m in self.models.values() for b in m.batchers.values() if (p := b.health(stall))]
        if not problems:
            problems = await self._probe(stall)
        if problems:
            log.error("fastclip serve: unhealthy: %s", "; ".join(problems))
            return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def _probe(self, timeout: float) -> list[str]:
        async with self._probe_lock:
            loop = asyncio.get_running_loop()
            for model in self.models.values():
                for tower, batcher in model.batchers.items():
                    if batcher.queued or time.monotonic() - batcher.last_batch_done < PROBE_AFTER:
                        continue  # busy or recently working: no probe needed
                    item = self._probe_image if tower == "image" else "a photo"
                    try:
                        job = batcher.submit([item], loop)
                    except QueueFull:
                        continue
                    try:
                        (row,) = await asyncio.wait_for(asyncio.shield(job.future), timeout or None)
                    except asyncio.TimeoutError:
                        batcher.cancel(job)
                        return [f"{batcher.name}: a probe input got no answer within {timeout:g} s"]
                    except Exception as exc:  # noqa: BLE001 - the model failed on a known-good input
                        return [f"{batcher.name}: a probe input failed: {first_line(exc)}"]
                    if not isinstance(row, np.ndarray) or not np.isfinite(row).all():
                        return [f"{batcher.name}: a probe input gave no finite vector"]
        return []

    async def render_metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _Measured:
    """ASGI wrapper counting requests by route and status and timing them (status 499: the client left first)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 499
        started = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = 500
            raise
        finally:
            self.metrics.in_flight.dec()
            route = self.metrics.route(scope.get("path", ""))
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _probe_image() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, format="PNG")
    return buf.getvalue()


def create_app(sources: Sequence[ModelSource], limits: Limits | None = None, **options: Any):
    """The ASGI app serving `sources` (see Server for the options); `app.server` is its Server."""
    server = Server(sources, limits, **options)
    server.app.server = server
    return server.app

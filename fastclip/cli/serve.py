"""`fastclip serve`: the HTTP embedding server (fastclip.serve) on uvicorn."""

from __future__ import annotations

import logging
import os
import signal
import sys

from ..defaults import PRECISIONS
from ..hints import install_hint
from .common import UsageError

MIB = 2**20
LOG_LEVELS = ("debug", "info", "warning", "error")


def add_parser(sub) -> None:
    from ..serve.limits import Limits  # no third-party import: the parser must build without the extra

    d = Limits()
    p = sub.add_parser(
        "serve", help="HTTP embedding server with dynamic batching (needs the serve extra)",
        description="Serve models over HTTP: POST /v1/embeddings (OpenAI shape, texts or images), /v1/classify, "
                    "GET /v1/models, /health, /ready, /metrics. Concurrent requests are batched together.")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH_OR_ID",
                   help="model folder, catalog name (`fastclip models`) or hub repo id to serve; repeat for several (requests pick one by NAME, "
                        "default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require Authorization: Bearer KEY (default: $FASTCLIP_API_KEY; prefer the variable, "
                        "a flag shows in the process list)")
    p.add_argument("--allow-urls", action="store_true",
                   help="fetch http(s) image URLs named in requests (off: any caller could make the server "
                        "request any address it can reach)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / MIB, help="largest request body (413)")
    g.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request (413)")
    g.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="inputs waiting per model tower; past it 503 + Retry-After")
    g.add_argument("--max-inflight-mb", type=float, default=d.max_inflight_bytes / MIB,
                   help="request bodies held at once; past it 503 + Retry-After")
    g.add_argument("--max-batch-images", type=int, default=d.max_batch_images, help="images per model run")
    g.add_argument("--max-batch-texts", type=int, default=d.max_batch_texts, help="texts per model run")
    g.add_argument("--max-wait-ms", type=float, default=d.max_wait * 1000,
                   help="how long a batch waits for more inputs to merge")
    g.add_argument("--image-workers", type=int, default=d.image_workers,
                   help="image batches in progress at once per model (2: one decodes while one runs)")
    g.add_argument("--text-workers", type=int, default=d.text_workers, help="text batches in progress at once")
    g.add_argument("--request-timeout", type=float, default=d.request_timeout, help="seconds before 504 (0: none)")
    g.add_argument("--body-timeout", type=float, default=d.body_timeout,
                   help="seconds to receive a request body before 408 (0: none)")
    g.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="connections and requests at once; past it uvicorn answers 503")
    g.add_argument("--stall-timeout", type=float, default=d.stall_timeout,
                   help="a batch running longer than this makes /health fail")
    g.add_argument("--url-timeout", type=float, default=d.url_timeout, help="seconds to fetch one image URL")
    g.add_argument("--max-url-mb", type=float, default=d.max_url_bytes / MIB, help="largest image fetched from a URL")
    g.add_argument("--max-labels", type=int, default=d.max_labels, help="labels per /v1/classify request")
    g.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to finish the requests in flight before exiting")
    m = p.add_argument_group("model")
    m.add_argument("--threads", type=int, help="onnxruntime threads per session (default: all cores)")
    m.add_argument("--precision", choices=PRECISIONS, help="model variant (default: fp32 on CPU)")
    m.add_argument("--cache-dir", metavar="DIR", help="hub cache folder")
    m.add_argument("--offline", action="store_true", help="use only models already cached")
    p.add_argument("--access-log", action="store_true", help="log every request line (uvicorn's access log)")
    # No "trace": uvicorn's trace level logs each request's headers, the API key among them.
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="uvicorn's and the server's log level (default info; -q: warning)")
    p.set_defaults(func=cmd_serve)


def limits_from(args):
    from ..serve.limits import Limits

    try:
        return Limits(
            max_body_bytes=int(args.max_body_mb * MIB), max_inputs=args.max_inputs, max_queue=args.max_queue,
            max_inflight_bytes=int(args.max_inflight_mb * MIB), max_batch_images=args.max_batch_images,
            max_batch_texts=args.max_batch_texts, max_wait=args.max_wait_ms / 1000, image_workers=args.image_workers,
            text_workers=args.text_workers, request_timeout=args.request_timeout, stall_timeout=args.stall_timeout,
            allow_urls=args.allow_urls, url_timeout=args.url_timeout, max_url_bytes=int(args.max_url_mb * MIB),
            max_labels=args.max_labels, body_timeout=args.body_timeout, max_connections=args.max_connections,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from ..serve import Server, parse_model_arg
    except ImportError as exc:
        raise UsageError(f"fastclip serve needs the serve extra: {install_hint('serve')} ({exc})") from None
    from ..errors import first_line

    limits = limits_from(args)
    api_key = args.api_key or os.environ.get("FASTCLIP_API_KEY") or None
    level = "warning" if args.quiet else args.log_level
    logging.getLogger("fastclip").setLevel(level.upper())
    try:
        server = Server([parse_model_arg(m) for m in args.model], limits, api_key=api_key,
                        load_options={"threads": args.threads, "precision": args.precision,
                                      "cache_dir": args.cache_dir, "offline": args.offline})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # The models load before the socket is bound: a model that cannot load fails the command with one line,
    # and a server that listens can answer.
    try:
        server.load()
    except Exception as exc:  # noqa: BLE001 - any load failure is one error line and exit 1
        print(f"fastclip: error: cannot load the models: {first_line(exc)}", file=sys.stderr)
        server.close()
        return 1
    config = uvicorn.Config(server.app, host=args.host, port=args.port, lifespan="on", access_log=args.access_log,
                            timeout_graceful_shutdown=args.graceful_timeout, log_level=level,
                            limit_concurrency=limits.max_connections, server_header=False, proxy_headers=False)
    logging.getLogger("fastclip.serve").info(
        "fastclip serve: %d model(s) on http://%s:%d%s%s", len(args.model), args.host, args.port,
        ", API key required" if api_key else "", ", image URLs allowed" if limits.allow_urls else "")
    # uvicorn drains the requests in flight on SIGTERM, restores the previous handler and raises the signal
    # again so the process dies of it; this handler makes a drained server exit 0 instead.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0

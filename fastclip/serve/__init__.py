"""`fastclip serve`: an HTTP embedding server over the runtime's batch call (the `serve` extra).

    app.py        the Server and its route table; the endpoint wrapper (API key, errors as JSON)
    context.py    what a route handler reads of its server (a Protocol the Server satisfies)
    routes.py     /v1/embeddings, /v1/classify, /v1/models, /ready, /metrics
    health.py     /health and its probe through idle towers
    errors.py     one table: exception -> (HTTP status, error type, code), and the JSON error answer
    auth.py       the API key
    body.py       the request body, streamed against its limits, and its JSON
    inputs.py     request validation, what each input is (text or image), data URIs / base64 to bytes
    urls.py       image URL fetching (--allow-urls)
    work.py       one request's inputs through the towers and back in input order
    lifecycle.py  loading the models, readiness, lookup by name, closing
    models.py     one model's towers and their batchers
    batcher.py    one bounded queue per model tower, merged into embed_batch calls on worker threads
    limits.py     the limits and their defaults (why each one is what it is)
    metrics.py    Prometheus metrics

The runtime never imports this package; this package imports the runtime. The extra's packages are
imported on first use of `Server` / `create_app`, the runtime on first use of the models: `fastclip --help`
works without the extra and loads no onnxruntime.
"""

from typing import Any

from .limits import Limits

__all__ = ["Server", "create_app", "Limits", "ModelSource", "parse_model_arg"]

# Imported on first use: the models module loads the runtime (onnxruntime), the app the extra's packages.
_LAZY = {"Server": "app", "create_app": "app", "ModelSource": "models", "parse_model_arg": "models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

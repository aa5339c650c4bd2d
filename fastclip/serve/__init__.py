"""`fastclip serve`: an HTTP embedding server over the runtime's batch call (the `serve` extra).

    app.py      Starlette routes: /v1/embeddings, /v1/classify, /v1/models, /health, /ready, /metrics
    batcher.py  one bounded queue per model tower, merged into embed_batch calls on worker threads
    inputs.py   request validation, data URIs / base64 to bytes, URL fetching (--allow-urls)
    limits.py   the limits and their defaults (why each one is what it is)
    metrics.py  Prometheus metrics
    models.py   loading the models, CLIP's own zero-shot scoring over batched vectors

The runtime never imports this package; this package imports the runtime. Only app.py and metrics.py need
the extra's packages, and they are imported on first use: `fastclip --help` works without the extra.
"""

from typing import Any

from .limits import Limits
from .models import ModelSource, parse_model_arg

__all__ = ["Server", "create_app", "Limits", "ModelSource", "parse_model_arg"]


def __getattr__(name: str) -> Any:
    if name in ("Server", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

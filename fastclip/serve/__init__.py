"""`fastclip serve`: an HTTP embedding server over the runtime's batch call (install with `fastclip[serve]`).

    app.py      Starlette routes: /v1/embeddings, /v1/classify, /v1/models, /health, /ready, /metrics
    batcher.py  one bounded queue per model tower, merged into embed_batch calls on worker threads
    inputs.py   request validation, data URIs / base64 to bytes, URL fetching (--allow-urls)
    limits.py   the limits and their defaults (why each one is what it is)
    metrics.py  Prometheus metrics
    models.py   loading the models, CLIP's own zero-shot scoring over batched vectors

The runtime never imports this package; this package imports the runtime.
"""

from .app import Server, create_app
from .limits import Limits
from .models import ModelSource, parse_model_arg

__all__ = ["Server", "create_app", "Limits", "ModelSource", "parse_model_arg"]

"""The models' lifetime in a server: loaded (now, or on a thread while the server already answers /health and
/ready), looked up by name per request, and closed on shutdown."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from ..errors import first_line
from .errors import NotReady
from .inputs import BadRequest
from .limits import Limits
from .metrics import Metrics
from .models import ModelSource, ServedModel, load_model

log = logging.getLogger("fastclip.serve")

__all__ = ["Models"]


class Models:
    """The served models by name. `ready` is set once every one is loaded; `load_error` says why not, if they failed."""

    def __init__(self, sources: Sequence[ModelSource], limits: Limits, metrics: Metrics, load_options: dict):
        if not sources:
            raise ValueError("serve at least one model")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"two models share a name: {names}; name them with --model NAME=PATH")
        self.sources = list(sources)
        self.limits = limits
        self.metrics = metrics
        self.load_options = load_options
        self.loaded: dict[str, ServedModel] = {}
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._loader: threading.Thread | None = None

    def load(self) -> None:
        """Load every model now; the first failure is raised (and kept in load_error)."""
        try:
            for source in self.sources:
                started = time.monotonic()
                self.loaded[source.name] = load_model(source, self.limits, self.metrics, **self.load_options)
                log.info("fastclip serve: model %r loaded from %s in %.1f s", source.name,
                         self.loaded[source.name].folder, time.monotonic() - started)
        except Exception as exc:
            self.load_error = first_line(exc)
            raise
        self.ready.set()

    def load_in_background(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        """Load on a thread unless already loaded; a failure is logged, shown on /ready and passed to on_error."""
        if self.ready.is_set() or self._loader is not None:
            return

        def run() -> None:
            try:
                self.load()
            except Exception as exc:  # noqa: BLE001 - reported on /ready and to on_error (the CLI exits 1)
                log.error("fastclip serve: cannot load the models: %s", self.load_error)
                if on_error is not None:
                    on_error(exc)

        self._loader = threading.Thread(target=run, name="fastclip-serve-load", daemon=True)
        self._loader.start()

    def check_ready(self) -> None:
        if not self.ready.is_set():
            raise NotReady(f"models failed to load: {self.load_error}" if self.load_error else "models are loading")

    def get(self, name: str | None) -> ServedModel:
        """The model a request names (or the only one), once loaded."""
        self.check_ready()
        if name is None:
            if len(self.loaded) == 1:
                return next(iter(self.loaded.values()))
            raise BadRequest(f"this server holds {len(self.loaded)} models: name one of {sorted(self.loaded)}",
                             param="model")
        model = self.loaded.get(name)
        if model is None:
            raise BadRequest(f"model {name!r} is not served here (GET /v1/models lists them)", param="model",
                             code="model_not_found", status=404)
        return model

    def close(self) -> None:
        if self._loader is not None:
            self._loader.join(timeout=60)
        for model in self.loaded.values():
            model.close()

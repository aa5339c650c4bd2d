"""What both embedding classes share: resolve the model → read its manifest → open its session.

`TowerModel` also says what another process needs to build the same model (`worker_spec()`), holds
the one `embed` path of both classes (in this process through `embed_batches`, or on a process pool
with `parallel=`), and owns the object's lifetime: `close()` ends its runner's threads and sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .batch import check_batching, one_or_many, rows_of
from .compat import FastembedNames
from .errors import FastClipError, ModelError
from .hashing import tower_fingerprint
from .manifest import Manifest
from .model import load_manifest, resolve_folder
from .runner import Tuning
from .providers import resolve_providers
from .session import LazySession, OnnxSession
from .worker import WorkerSpec

__all__ = ["TowerModel"]


class TowerModel(FastembedNames):
    """What both embedding classes share: resolve the model, read its manifest, open one tower.

    Options (keyword-only, for both classes): cache_dir, local_files_only, revision (hub
    resolution); providers, threads (onnxruntime); precision ("fp32", "fp16", "int8": pins a
    variant, default fp32 on CPU and fp16 on GPU when present); verify (check the file's sha256);
    tuning (a fastclip.Tuning: scheduling knobs, see there); manifest (the folder's manifest, when the
    caller has read it already: it is not read again).

    fastembed's constructor keywords work as there (fastclip.compat): cuda (True: CUDA or a ModelError,
    False: CPU, "auto"/None: CUDA when it really works), device_ids (GPU ids: the first for this
    process, spread round-robin over the workers of `parallel=`), lazy_load (open the onnxruntime
    session on first use instead of now: with `parallel=`, this process never loads the model at
    all), and specific_model_path (a local folder to load instead of `model_name`).
    The object owns its threads and sessions: close() ends them, as does leaving a `with` block.
    """

    tower_name = ""
    kind = ""
    default_repo = ""
    default_batch_size = 1

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        providers: list | None = None,
        cuda: Any = None,
        device_ids: list[int] | None = None,
        lazy_load: bool = False,
        local_files_only: bool = False,
        revision: str | None = None,
        precision: str | None = None,
        verify: bool = False,
        tuning: Tuning | None = None,
        specific_model_path: str | Path | None = None,
        manifest: Manifest | None = None,
    ):
        self.model_name = str(model_name or self.default_repo)
        self.tuning = tuning if tuning is not None else Tuning()
        self.folder = Path(specific_model_path) if specific_model_path is not None else resolve_folder(
            self.model_name, cache_dir=cache_dir, local_files_only=local_files_only, revision=revision,
            tower=self.tower_name,
        )
        self.manifest: Manifest = manifest if manifest is not None else load_manifest(self.folder)
        self.spec = getattr(self.manifest, self.tower_name)
        if self.spec is None:
            missing = self.manifest.source.get("missing")  # what a layout reader found instead
            why = missing.get(self.tower_name) if isinstance(missing, dict) else None
            raise ModelError(f"{self.model_name}: this model folder has no {self.tower_name} tower"
                             + (f" ({why})" if why else ""))
        self.threads = threads
        self.device_ids = list(device_ids) if device_ids else None
        self._requested_precision = precision
        # The constructor keywords that rebuild this very model elsewhere (worker_spec); subclasses add theirs.
        self._options: dict[str, Any] = {"threads": threads, "providers": providers, "cuda": cuda,
                                         "device_ids": self.device_ids, "precision": precision, "verify": verify,
                                         "tuning": self.tuning}
        providers, cuda_required = resolve_providers(providers, cuda, self.device_ids)
        self._session = LazySession(
            self.folder, self.spec, embed_dim=self.manifest.embed_dim, cuda_required=cuda_required, owner=self._name(),
            name=self.tower_name, providers=providers, threads=threads, precision=precision, verify=verify,
            allow_spinning=self._allow_spinning(),
        )
        if not lazy_load:
            self._session.get()

    def _allow_spinning(self) -> bool:
        return True if self.tuning.allow_spinning is None else self.tuning.allow_spinning

    @property
    def _tower(self) -> OnnxSession:
        """The onnxruntime session, opened on first use with lazy_load."""
        return self._session.get()

    @property
    def dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def fingerprint(self) -> str:
        """Which weights this tower holds (hashing.tower_fingerprint): embeddings files record it."""
        return tower_fingerprint(self.folder, self.spec)

    @property
    def precision(self) -> str:
        return self._tower.precision

    @property
    def device(self) -> str:
        return self._tower.device

    def worker_spec(self) -> WorkerSpec:
        """What another process needs to build this very model: `spec.open(threads=, device_id=)` there."""
        return WorkerSpec(model_class=type(self), folder=str(self.folder.resolve()), model_name=self.model_name,
                          kind=self.kind, batch_size=self.default_batch_size, options=dict(self._options))

    @classmethod
    def _worker_tuning(cls, tuning: Tuning, threads: int) -> Tuning:
        """The tuning of a copy given `threads` onnxruntime threads, as one of several processes."""
        return tuning

    # --------------------------------------------------------------------------------------- embed

    def _rows(self, items: Any, batch_size: int, parallel: int | None, *, errors: str,
              on_error: Callable[[FastClipError], None] | None = None, **options: Any) -> Iterator[np.ndarray | None]:
        """`embed` of both classes: one vector (or None) per input, from embed_batches or a process pool."""
        check_batching(batch_size, errors)
        if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 0):
            raise ValueError(f"parallel must be None (this process), 0 (one process per core) or a positive "
                             f"integer, got {parallel!r}")
        if parallel is None:
            return rows_of(self.embed_batches(items, batch_size, errors=errors, **options), on_error)
        self._check_open()
        from .pool import pooled_embed  # multiprocessing and the pool's machinery load on first use

        return pooled_embed(self, one_or_many(items), batch_size, parallel, errors=errors, on_error=on_error,
                              **options)

    # ------------------------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """End this object's threads and release its sessions; later calls raise FastClipError."""
        self._runner.close()  # first: no new decode pool or second session once the session is gone
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        self._session.check_open()

    def _name(self) -> str:
        return f"{type(self).__name__}({self.model_name!r})"

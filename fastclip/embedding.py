"""The public classes: ImageEmbedding, TextEmbedding and CLIP.

Each reads top-down: resolve the model → read its manifest → open the session → hand the inputs to
its runner (fastclip.runner: preprocess → batch → run → L2-normalize) → yield. One batch-level call,
`embed_batch`, embeds one list of inputs; `embed_batches` yields EmbeddingBatch objects over a stream;
`embed` yields one vector per input, in input order, consuming its input lazily so memory stays flat
on an unbounded stream. The process pool (fastclip.bulk) and Ray build the model again in other
processes from `worker_spec()` and call the same `embed_batch`.

The threads an object uses (image decoding, concurrent text runs) and its second text session belong
to its runner: `close()` (or leaving a `with` block) ends them; dropping or closing a generator
mid-stream cancels the decodes it had queued.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .batch import IMAGE_BATCH, TEXT_BATCH, EmbeddingBatch, check_batching, one_or_many, rows_of
from .compat import FastembedNames, FastembedTextNames
from .errors import ImageError, ModelError
from .images import ImagePreprocessor
from .manifest import Manifest, tower_fingerprint
from .model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO, load_manifest, resolve_folder
from .runner import ImageRunner, TextRunner, Tuning, available_cores, l2_normalize, parallel_embed
from .session import LoadedTower, TowerSession, resolve_providers
from .text import TextTokenizer
from .worker import WorkerSpec

__all__ = ["CLIP", "ImageEmbedding", "TextEmbedding", "l2_normalize"]


class _TowerModel(FastembedNames):
    """What both embedding classes share: resolve the model, read its manifest, open one tower.

    Options (keyword-only, for both classes): cache_dir, local_files_only, revision (hub
    resolution); providers, threads (onnxruntime); precision ("fp32", "fp16", "int8": pins a
    variant, default fp32 on CPU and fp16 on GPU when present); verify (check the file's sha256);
    tuning (a fastclip.Tuning: scheduling knobs, see there).

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
    ):
        self.model_name = str(model_name or self.default_repo)
        self.tuning = tuning if tuning is not None else Tuning()
        self.folder = Path(specific_model_path) if specific_model_path is not None else resolve_folder(
            self.model_name, cache_dir=cache_dir, local_files_only=local_files_only, revision=revision
        )
        self.manifest: Manifest = load_manifest(self.folder)
        self.spec = getattr(self.manifest, self.tower_name)
        if self.spec is None:
            raise ModelError(f"{self.model_name}: this model folder has no {self.tower_name} tower")
        self.threads = threads
        self.device_ids = list(device_ids) if device_ids else None
        self._requested_precision = precision
        # The constructor keywords that rebuild this very model elsewhere (worker_spec); subclasses add theirs.
        self._options: dict[str, Any] = {"threads": threads, "providers": providers, "cuda": cuda,
                                         "device_ids": self.device_ids, "precision": precision, "verify": verify,
                                         "tuning": self.tuning}
        providers, cuda_required = resolve_providers(providers, cuda, self.device_ids)
        self._session = TowerSession(
            self.folder, self.spec, embed_dim=self.manifest.embed_dim, cuda_required=cuda_required, owner=self._name(),
            name=self.tower_name, providers=providers, threads=threads, precision=precision, verify=verify,
            allow_spinning=self._allow_spinning(),
        )
        if not lazy_load:
            self._session.get()

    def _allow_spinning(self) -> bool:
        return True if self.tuning.allow_spinning is None else self.tuning.allow_spinning

    @property
    def _tower(self) -> LoadedTower:
        """The onnxruntime session, opened on first use with lazy_load."""
        return self._session.get()

    @property
    def dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def fingerprint(self) -> str:
        """Which weights this tower holds (manifest.tower_fingerprint): embeddings files record it."""
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


def _check_parallel(parallel: Any) -> None:
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 0):
        raise ValueError(f"parallel must be None (this process), 0 (one process per core) or a positive integer, "
                         f"got {parallel!r}")


class ImageEmbedding(_TowerModel):
    """Image vectors from a CLIP vision tower.

    model_name: a fastclip model folder, a fastembed-style tower folder, or a hub repo id
    (default: fastembed's published CLIP ViT-B/32 vision tower).
    exif_transpose: apply EXIF orientation (default) so a photo is embedded the way a person sees it;
    False reproduces reference pipelines (open_clip, transformers) bit for bit, which ignore EXIF.
    fast: True decodes JPEGs at reduced size (at least twice the crop) before the bicubic resize:
    ~2.4x faster preprocessing, vectors within a cosine of ~3e-5 of exact on the benchmark photos.
    "max" reduces down to the crop size: ~3.6x faster, within ~1e-4. Off by default.
    workers: threads that decode and preprocess the next images while the model runs (0 = inline);
    the same as tuning=Tuning(decode_workers=...), which it overrides.
    Other options: see _TowerModel.
    """

    tower_name = "vision"
    kind = "image"
    default_repo = DEFAULT_VISION_REPO
    default_batch_size = IMAGE_BATCH

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        exif_transpose: bool = True,
        fast: bool | str = False,
        workers: int | None = None,
        tuning: Tuning | None = None,
        **options: Any,
    ):
        tuning = tuning if tuning is not None else Tuning()
        if workers is not None:
            tuning = replace(tuning, decode_workers=int(workers))
        if tuning.decode_workers is None:
            tuning = replace(tuning, decode_workers=min(4, available_cores()))
        self.workers = tuning.decode_workers
        super().__init__(model_name, tuning=tuning, **options)
        self._options.update(exif_transpose=exif_transpose, fast=fast)
        preprocess = ImagePreprocessor(self.spec, exif_transpose=exif_transpose, fast=fast)
        self._runner = ImageRunner(self.spec, preprocess, self._session.get, dim=self.dim, workers=self.workers,
                                   read_ahead=self.tuning.read_ahead, owner=self._name())

    def _allow_spinning(self) -> bool:
        if self.tuning.allow_spinning is not None:
            return self.tuning.allow_spinning
        # Decode threads share the cores with onnxruntime, whose idle threads would otherwise spin-wait
        # between operators. Measured on 2 cores, ViT-B/32: not spinning gives fp32 +5-7 % img/s at
        # batch 32 and +20 % at batch 1; int8's shorter operators lose ~3 % to the wake-up latency.
        return self.workers == 0 or self._requested_precision == "int8"

    @classmethod
    def _worker_tuning(cls, tuning: Tuning, threads: int) -> Tuning:
        # One thread per worker decodes inline; with more, the decode threads match the onnxruntime threads.
        return replace(tuning, decode_workers=0 if threads == 1 else threads)

    def embed(
        self,
        images: Iterable[Any],
        batch_size: int = IMAGE_BATCH,
        parallel: int | None = None,
        *,
        normalize: bool = True,
        errors: str = "raise",
        on_error: Callable[[ImageError], None] | None = None,
    ) -> Iterator[np.ndarray | None]:
        """Yield one float32 vector of shape (dim,) per image, in input order.

        images: any iterable (consumed lazily) of paths, bytes, binary file objects, PIL images or
        HWC uint8 arrays, mixed freely. errors="skip" yields None for an image that cannot be read
        (outputs stay aligned with inputs) and passes its ImageError to on_error, if given; the
        default raises ImageError naming the image's index and source.
        parallel (as in fastembed): None embeds in this process; N > 0 in N worker processes, 0 in
        one per core (fastclip.bulk.EmbeddingPool, started for this call and ended with it): same
        vectors, same order, same error handling; open file objects are read here and sent as bytes.
        """
        check_batching(batch_size, errors)
        _check_parallel(parallel)
        if parallel is not None:
            self._check_open()
            return parallel_embed(self, one_or_many(images), batch_size, parallel, normalize=normalize,
                                  errors=errors, on_error=on_error)
        return rows_of(self.embed_batches(images, batch_size, normalize=normalize, errors=errors), on_error)

    def embed_batches(self, images: Iterable[Any], batch_size: int = IMAGE_BATCH, *, normalize: bool = True,
                      errors: str = "raise") -> Iterator[EmbeddingBatch]:
        """Yield one EmbeddingBatch per `batch_size` consecutive images, in input order, decoding ahead
        as `embed` does. errors="raise" raises the first unreadable image's ImageError once the
        batches before it were yielded; "skip" leaves it in its batch's `failures`."""
        check_batching(batch_size, errors)
        self._check_open()
        return self._runner.stream(one_or_many(images), batch_size, normalize, errors)

    def embed_batch(self, images: Sequence[Any], *, start_index: int = 0, normalize: bool = True,
                    batch_size: int | None = None) -> EmbeddingBatch:
        """Embed one list of images at once: decode + preprocess (on the decode threads), run, normalize.

        Never raises for an image that cannot be read: it lands in the result's `failures` (keyed by
        start_index + its position) and has no row in `vectors`. Indices in errors count from start_index.
        batch_size: images per model run (default: all of them in one).
        """
        self._check_open()
        return self._runner.embed_batch(list(images), start_index, normalize, batch_size)


class TextEmbedding(_TowerModel, FastembedTextNames):
    """Text vectors from a CLIP text tower (default: fastembed's published CLIP ViT-B/32 text tower).

    concurrent_runs: on CPU, large jobs (a window of at least 8 runs, e.g. 256+ texts) go to a second
    session with one onnxruntime thread, run that many at a time (default: one per core; 1 = off).
    Same vectors; the second session is opened on the first large job and costs the model's size
    in memory again (~250 MB for ViT-B/32). Short jobs keep the multi-threaded session and its latency.
    The same as tuning=Tuning(concurrent_runs=...), which it overrides.
    Other options: see _TowerModel.
    """

    tower_name = "text"
    kind = "text"
    default_repo = DEFAULT_TEXT_REPO
    default_batch_size = TEXT_BATCH

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        concurrent_runs: int | None = None,
        tuning: Tuning | None = None,
        **options: Any,
    ):
        tuning = tuning if tuning is not None else Tuning()
        if concurrent_runs is not None:
            tuning = replace(tuning, concurrent_runs=max(1, int(concurrent_runs)))
        if tuning.concurrent_runs is None:
            tuning = replace(tuning, concurrent_runs=max(1, int(options.get("threads") or available_cores())))
        self.concurrent_runs = tuning.concurrent_runs
        super().__init__(model_name, tuning=tuning, **options)
        self._tokenizer = TextTokenizer(self.folder / self.spec.tokenizer, self.spec)
        self._runner = TextRunner(self.spec, self._tokenizer, self._session.get, dim=self.dim, tuning=self.tuning,
                                  owner=self._name())

    @classmethod
    def _worker_tuning(cls, tuning: Tuning, threads: int) -> Tuning:
        return replace(tuning, concurrent_runs=1)  # the processes are the concurrent runs

    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> np.ndarray:
        """The int64 token ids the model sees, padded to the longest text (or the context length)."""
        return self._tokenizer.encode_batch(list(texts), truncate=truncate)

    def embed(
        self,
        texts: Iterable[str] | str,
        batch_size: int = TEXT_BATCH,
        parallel: int | None = None,
        *,
        normalize: bool = True,
        truncate: bool = True,
        errors: str = "raise",
    ) -> Iterator[np.ndarray | None]:
        """Yield one float32 vector of shape (dim,) per text, in input order.

        Texts longer than the context are cut with the end token kept last (as the reference
        tokenizers do); truncate=False raises TextError naming the text's index instead.
        errors="skip" yields None for a text that cannot be embedded (not a str, too long with
        truncate=False) instead of raising, so outputs stay aligned with inputs.
        parallel: as for ImageEmbedding.embed (None: this process; N: N worker processes; 0: one per core).
        """
        check_batching(batch_size, errors)
        _check_parallel(parallel)
        if parallel is not None:
            self._check_open()
            return parallel_embed(self, one_or_many(texts), batch_size, parallel, normalize=normalize,
                                  truncate=truncate, errors=errors)
        return rows_of(self.embed_batches(texts, batch_size, normalize=normalize, truncate=truncate, errors=errors))

    def embed_batches(self, texts: Iterable[str] | str, batch_size: int = TEXT_BATCH, *, normalize: bool = True,
                      truncate: bool = True, errors: str = "raise") -> Iterator[EmbeddingBatch]:
        """Yield one EmbeddingBatch per `batch_size` consecutive texts, in input order (computed a
        bucketing window at a time, see fastclip.runner). errors="raise" raises the first failing
        text's TextError once the batches before it were yielded; "skip" leaves it in `failures`."""
        check_batching(batch_size, errors)
        self._check_open()
        return self._runner.batches(one_or_many(texts), batch_size, normalize, truncate, errors)

    def embed_batch(self, texts: Sequence[str], *, start_index: int = 0, normalize: bool = True,
                    truncate: bool = True, batch_size: int = TEXT_BATCH) -> EmbeddingBatch:
        """tokenize → run → normalize for one list of texts, in input order.

        Never raises for one text that cannot be embedded (not a str; too long with truncate=False):
        it lands in `failures` (keyed by start_index + its position) and has no row in `vectors`.
        With a dynamic-length graph and more texts than one run takes (batch_size, at most
        tuning.text_run_rows on CPU), the texts are sorted by length and run in groups;
        otherwise they run in input-order batches of batch_size.
        """
        self._check_open()
        return self._runner.embed_batch(list(one_or_many(texts)), start_index, normalize, truncate, batch_size)


class CLIP:
    """Both towers of one model, with similarity and zero-shot classification.

    model_name: one fastclip folder or repo holding both towers. With no model named, fastembed's
    published CLIP ViT-B/32 vision and text repos are used together. close() (or a `with` block)
    ends both towers' threads.
    """

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        exif_transpose: bool = True,
        fast: bool | str = False,
        workers: int | None = None,
        concurrent_runs: int | None = None,
        **common: Any,
    ):
        self.images = ImageEmbedding(
            model_name or DEFAULT_VISION_REPO, exif_transpose=exif_transpose, fast=fast, workers=workers, **common
        )
        self.texts = TextEmbedding(model_name or DEFAULT_TEXT_REPO, concurrent_runs=concurrent_runs, **common)
        if self.images.dim != self.texts.dim:
            raise ModelError(
                f"vision tower gives {self.images.dim}-d vectors, text tower {self.texts.dim}-d: not one CLIP model"
            )
        self.logit_scale = self.images.manifest.logit_scale
        self.logit_bias = self.images.manifest.logit_bias

    @property
    def dim(self) -> int:
        return self.images.dim

    def close(self) -> None:
        self.images.close()
        self.texts.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed_images(self, images: Iterable[Any], batch_size: int = IMAGE_BATCH, parallel: int | None = None,
                     **kw: Any) -> Iterator[np.ndarray | None]:
        return self.images.embed(images, batch_size, parallel, **kw)

    def embed_texts(self, texts: Iterable[str] | str, batch_size: int = TEXT_BATCH, parallel: int | None = None,
                    **kw: Any) -> Iterator[np.ndarray]:
        return self.texts.embed(texts, batch_size, parallel, **kw)

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """Cosine similarity between every row of `a` and every row of `b` (vectors or stacks of them)."""
        a2 = l2_normalize(np.atleast_2d(np.asarray(list(a) if not hasattr(a, "shape") else a, dtype=np.float32)))
        b2 = l2_normalize(np.atleast_2d(np.asarray(list(b) if not hasattr(b, "shape") else b, dtype=np.float32)))
        return a2 @ b2.T

    def classify(
        self, images: Iterable[Any], labels: Sequence[str], *, template: str = "a photo of a {}.",
        batch_size: int = IMAGE_BATCH,
    ) -> np.ndarray:
        """Zero-shot probabilities, shape (n_images, n_labels): softmax over the model's own logits."""
        if isinstance(labels, str) or not labels:
            raise ValueError("labels must be a non-empty list of strings")
        prompts = [template.format(label) for label in labels]
        text = np.stack(list(self.texts.embed(prompts)))
        image = np.stack(list(self.images.embed(images, batch_size)))
        logits = self.logit_scale * (image @ text.T)
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

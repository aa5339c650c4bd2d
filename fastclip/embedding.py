"""The public classes: ImageEmbedding, TextEmbedding and CLIP.

Each one reads top-down: resolve the model → read its manifest → open the session → preprocess
→ batch → run → L2-normalize → yield. One batch-level call, `embed_batch`, does preprocess → run →
normalize for one list of inputs; the lazy `embed` generators, the process pool (fastclip.bulk) and
the Ray integration are loops around it. `embed` consumes its input lazily and yields one vector per
input, in input order, so memory stays flat on an unbounded stream.

The threads an object uses (image decoding, concurrent text runs) and its second text session belong
to it: `close()` (or leaving a `with` block) ends them; dropping or closing a generator mid-stream
cancels the decodes it had queued.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .batch import EmbeddingBatch
from .errors import FastClipError, ImageError, ModelError, TextError, TextTypeError
from .families.score import SCORERS
from .images import ImagePreprocessor
from .manifest import Manifest, Tower, tower_fingerprint
from .model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO, load_manifest, resolve_folder
from .runner import Tuning, available_cores
from .session import CPU, CUDA, LoadedTower, check_graph, open_tower
from .text import TextTokenizer

ERRORS = ("raise", "skip")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def _providers(providers: list | None, cuda: Any, device_ids: list[int] | None) -> tuple[list | None, bool]:
    """fastembed's `cuda=` / `device_ids=` turned into onnxruntime providers; (providers, CUDA required)."""
    mode = getattr(cuda, "value", cuda)  # fastembed's Device enum ("auto", "cuda", "cpu") or a bool
    if mode in (None, "auto"):
        if device_ids and providers is None:
            providers = [(CUDA, {"device_id": int(device_ids[0])}), CPU]  # used only if CUDA really works
        return providers, False
    if providers is not None:
        raise ValueError("pass either providers= or cuda=, not both")
    if mode is True or mode == "cuda":
        return [(CUDA, {"device_id": int(device_ids[0]) if device_ids else 0}), CPU], True
    if mode is False or mode == "cpu":
        return [CPU], False
    raise ValueError(f"cuda must be True, False or 'auto', got {cuda!r}")


class _TowerModel:
    """What both embedding classes share: resolve the model, read its manifest, open one tower.

    Options (keyword-only, for both classes): cache_dir, local_files_only, revision (hub
    resolution); providers, threads (onnxruntime); precision ("fp32", "fp16", "int8": pins a
    variant, default fp32 on CPU and fp16 on GPU when present); verify (check the file's sha256);
    tuning (a fastclip.Tuning: scheduling knobs, see there).

    fastembed's constructor keywords work as there: cuda (True: CUDA or a ModelError, False: CPU,
    "auto"/None: CUDA when it really works), device_ids (GPU ids: the first for this process, spread
    round-robin over the workers of `parallel=`), lazy_load (open the onnxruntime session on first
    use instead of now: with `parallel=`, this process never loads the model at all), and
    specific_model_path (a local folder to load instead of `model_name`).
    The object owns its threads and sessions: close() ends them, as does leaving a `with` block.
    """

    tower_name = ""
    default_repo = ""

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
        self._providers, self._cuda_required = _providers(providers, cuda, self.device_ids)
        self._requested_precision = precision
        self._verify = verify
        # Everything a worker process needs to open this very tower again without resolving the name.
        self._worker_options = {"precision": precision, "verify": verify, "tuning": self.tuning}
        self._lock = threading.Lock()
        self._loaded: LoadedTower | None = None
        self._closed = False
        if not lazy_load:
            self._load()

    # ------------------------------------------------------------------------------------- session

    def _allow_spinning(self) -> bool:
        return True if self.tuning.allow_spinning is None else self.tuning.allow_spinning

    def _load(self) -> LoadedTower:
        with self._lock:
            if self._closed:
                raise FastClipError(f"{type(self).__name__}({self.model_name!r}) is closed")
            if self._loaded is None:
                loaded = open_tower(
                    self.folder, self.spec, name=self.tower_name, providers=self._providers, threads=self.threads,
                    precision=self._requested_precision, verify=self._verify, allow_spinning=self._allow_spinning(),
                )
                check_graph(loaded, self.spec, self.manifest.embed_dim, f"{self.folder} ({self.tower_name} tower)")
                if self._cuda_required and loaded.device != "cuda":
                    raise ModelError(f"{self.folder} ({self.tower_name} tower): cuda=True, but onnxruntime runs it "
                                     "on CPU here (see the log line above for why); pass cuda=False or cuda='auto'")
                self._loaded = loaded
            return self._loaded

    @property
    def _tower(self) -> LoadedTower:
        loaded = self._loaded
        return loaded if loaded is not None else self._load()

    @property
    def dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def embedding_size(self) -> int:
        """fastembed's name for `dim`."""
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

    # ------------------------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """End this object's threads and release its sessions; later calls raise FastClipError."""
        with self._lock:
            self._closed = True
            loaded, self._loaded = self._loaded, None
        self._close_runners()
        if loaded is not None and hasattr(loaded, "close"):
            loaded.close()  # the model files held open for reopen()

    def _close_runners(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise FastClipError(f"{type(self).__name__}({self.model_name!r}) is closed")

    # --------------------------------------------------------------------------------- fastembed

    @classmethod
    def list_supported_models(cls) -> list[dict[str, Any]]:
        """The hub repos fastclip knows by name, as fastembed lists them (model, dim, description, ...).

        Any folder written by `fastclip export` (any open_clip or transformers CLIP model) and any
        fastembed-style tower folder load too; they are not listed because they are not names.
        """
        return [dict(entry, sources=dict(entry["sources"])) for entry in cls._supported]

    @classmethod
    def get_embedding_size(cls, model_name: str) -> int:
        """fastembed's classmethod: the dim of a listed model, without loading it."""
        for entry in cls._supported:
            if entry["model"].lower() == str(model_name).lower():
                return entry["dim"]
        raise ValueError(f"{model_name} is not a listed model; load it and read .dim (or .embedding_size)")

    _supported: tuple[dict[str, Any], ...] = ()


def _check_common(batch_size: int, errors: str) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")


def _check_parallel(parallel: Any) -> None:
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 0):
        raise ValueError(f"parallel must be None (this process), 0 (one process per core) or a positive integer, "
                         f"got {parallel!r}")


def _run(loaded: LoadedTower, spec: Tower, feeds: dict[str, np.ndarray], normalize: bool) -> np.ndarray:
    out = loaded.session.run([spec.output_name], feeds)[0]
    out = np.asarray(out, dtype=np.float32)  # fp16 graphs may return half precision
    return l2_normalize(out) if normalize else out


def _split(batch: EmbeddingBatch, size: int) -> Iterator[EmbeddingBatch]:
    """`batch` as consecutive batches of `size` inputs (views of its vectors, no copy)."""
    if batch.count <= size:
        yield batch
        return
    ok = batch.ok
    row = 0
    for lo in range(0, batch.count, size):
        hi = min(lo + size, batch.count)
        n_ok = int(ok[lo:hi].sum())
        start = batch.start_index + lo
        failures = {i: e for i, e in batch.failures.items() if start <= i < batch.start_index + hi}
        yield EmbeddingBatch(start_index=start, count=hi - lo, vectors=batch.vectors[row : row + n_ok], failures=failures)
        row += n_ok


class _PendingImages:
    """One batch of images being decoded, each straight into its row of one (n, 3, S, S) array."""

    def __init__(self, start: int, pixels: np.ndarray, results: list):
        self.start = start
        self.pixels = pixels
        self.results = results  # per input: None (ok), an ImageError, or a Future of either

    def collect(self) -> tuple[np.ndarray, dict[int, ImageError]]:
        """(pixels of the good images, {failed index: ImageError}), waiting for the decodes."""
        outcome = [r.result() if isinstance(r, Future) else r for r in self.results]
        failures = {self.start + j: e for j, e in enumerate(outcome) if e is not None}
        if not failures:
            return self.pixels, failures
        keep = np.array([e is None for e in outcome])
        return self.pixels[keep], failures

    def cancel(self) -> int:
        """Cancel the decodes that have not started; returns how many were cancelled."""
        return sum(1 for r in self.results if isinstance(r, Future) and r.cancel())


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
    default_repo = DEFAULT_VISION_REPO
    _supported = ({
        "model": DEFAULT_VISION_REPO, "dim": 512,
        "description": "CLIP ViT-B/32 vision tower (OpenAI weights, fastembed's ONNX export); fastclip's default",
        "license": "mit", "size_in_GB": 0.34, "sources": {"hf": DEFAULT_VISION_REPO}, "model_file": "model.onnx",
        "additional_files": [], "tasks": {},
    },)

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
        self._preprocess_options = {"exif_transpose": exif_transpose, "fast": fast}
        super().__init__(model_name, tuning=tuning, **options)
        self._worker_options.update(self._preprocess_options)
        self._preprocess = ImagePreprocessor(self.spec, exif_transpose=exif_transpose, fast=fast)
        self._pool: ThreadPoolExecutor | None = None

    def _allow_spinning(self) -> bool:
        if self.tuning.allow_spinning is not None:
            return self.tuning.allow_spinning
        # Decode threads share the cores with onnxruntime, whose idle threads would otherwise spin-wait
        # between operators. Measured on 2 cores, ViT-B/32: not spinning gives fp32 +5-7 % img/s at
        # batch 32 and +20 % at batch 1; int8's shorter operators lose ~3 % to the wake-up latency.
        return self.workers == 0 or self._requested_precision == "int8"

    def embed(
        self,
        images: Iterable[Any],
        batch_size: int = 32,
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
        _check_common(batch_size, errors)
        _check_parallel(parallel)
        self._check_open()
        if isinstance(images, (str, Path)):
            images = [images]  # one path, not a stream of characters
        if parallel is not None:
            from .bulk.pool import pooled_embed  # the process machinery is imported only when used

            return pooled_embed(self, images, batch_size, parallel, normalize=normalize, errors=errors,
                                on_error=on_error)
        return self._embed(images, batch_size, normalize, errors, on_error)

    def embed_batch(self, images: Sequence[Any], *, start_index: int = 0, normalize: bool = True) -> EmbeddingBatch:
        """Embed one list of images at once: decode + preprocess (on the decode threads), one run, normalize.

        Never raises for an image that cannot be read: it lands in the result's `failures` (keyed by
        start_index + its position) and has no row in `vectors`. Indices in errors count from start_index.
        """
        self._check_open()
        images = list(images)
        pool = self._decode_pool() if len(images) > 1 else None  # one image: no thread hop
        pixels, failures = self._start(images, start_index, pool).collect()
        return self._run_images(start_index, len(images), pixels, failures, normalize)

    def embed_batches(self, images: Iterable[Any], batch_size: int = 32, *, normalize: bool = True,
                      errors: str = "raise") -> Iterator[EmbeddingBatch]:
        """Yield one EmbeddingBatch per `batch_size` consecutive images, in input order, decoding ahead
        as `embed` does. errors="raise" raises the first unreadable image's ImageError once the
        batches before it were yielded; "skip" leaves it in its batch's `failures`."""
        _check_common(batch_size, errors)
        self._check_open()
        if isinstance(images, (str, Path)):
            images = [images]
        return self._stream(images, batch_size, normalize, errors)

    def _embed(self, images, batch_size, normalize, errors, on_error) -> Iterator[np.ndarray | None]:
        for batch in self._stream(images, batch_size, normalize, errors):
            for index, row in zip(itertools.count(batch.start_index), batch.rows()):
                if row is None and on_error is not None:
                    on_error(batch.failures[index])
                yield row

    def _stream(self, images: Iterable[Any], batch_size: int, normalize: bool, errors: str) -> Iterator[EmbeddingBatch]:
        """embed_batch over consecutive batches, with the next `read_ahead` batches decoded in the
        decode threads (Pillow and numpy release the GIL) while the model runs on the current one;
        the bound keeps memory flat. Closing the generator cancels the decodes not yet started."""
        numbered = iter(images)
        pool = self._decode_pool()
        depth = 1 + (self.tuning.read_ahead if pool is not None else 0)
        pending: deque[_PendingImages] = deque()
        start = 0
        try:
            while True:
                while len(pending) < depth and (chunk := list(itertools.islice(numbered, batch_size))):
                    if pool is not None and len(chunk) == 1 and not pending:
                        # One image with nothing queued (a web request, the first of a batch-size-1 stream):
                        # when it is also the last, decode it here; a decode thread would only add a hop.
                        after = list(itertools.islice(numbered, batch_size))
                        pending.append(self._start(chunk, start, pool if after else None))
                        start += 1
                        if not after:
                            break
                        chunk = after
                    pending.append(self._start(chunk, start, pool))
                    start += len(chunk)
                if not pending:
                    return
                current = pending.popleft()
                pixels, failures = current.collect()
                if errors == "raise" and failures:
                    raise failures[min(failures)]
                yield self._run_images(current.start, len(current.results), pixels, failures, normalize)
        finally:
            for batch in pending:
                batch.cancel()

    def _start(self, items: list[Any], start: int, pool: ThreadPoolExecutor | None) -> _PendingImages:
        size = self.spec.image_size
        pixels = np.empty((len(items), 3, size, size), dtype=np.float32)
        if pool is None:
            results = [self._decode_into(item, start + j, pixels[j]) for j, item in enumerate(items)]
        else:
            results = [pool.submit(self._decode_into, item, start + j, pixels[j]) for j, item in enumerate(items)]
        return _PendingImages(start, pixels, results)

    def _decode_into(self, item: Any, index: int, out: np.ndarray) -> ImageError | None:
        try:
            self._preprocess(item, index, out=out)
        except ImageError as exc:
            return exc  # reported in input order by the consuming thread, not from a decode thread
        return None

    def _run_images(self, start: int, count: int, pixels: np.ndarray, failures: dict, normalize: bool) -> EmbeddingBatch:
        if len(pixels):
            vectors = _run(self._tower, self.spec, {self.spec.input_name: pixels}, normalize)
        else:
            vectors = np.empty((0, self.dim), dtype=np.float32)
        return EmbeddingBatch(start_index=start, count=count, vectors=vectors, failures=failures)

    def _decode_pool(self) -> ThreadPoolExecutor | None:
        if self.workers <= 0:
            return None
        pool = self._pool
        if pool is None:
            with self._lock:
                self._check_open()
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fastclip-decode")
                pool = self._pool
        return pool

    def _close_runners(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class TextEmbedding(_TowerModel):
    """Text vectors from a CLIP text tower (default: fastembed's published CLIP ViT-B/32 text tower).

    concurrent_runs: on CPU, large jobs (a window of at least 8 runs, e.g. 256+ texts) go to a second
    session with one onnxruntime thread, run that many at a time (default: one per core; 1 = off).
    Same vectors; the second session is opened on the first large job and costs the model's size
    in memory again (~250 MB for ViT-B/32). Short jobs keep the multi-threaded session and its latency.
    The same as tuning=Tuning(concurrent_runs=...), which it overrides.
    language: the source language of the texts, for towers that take one (NLLB: a FLORES-200 code such as
    "fra_Latn"; the manifest lists the codes and the default, "eng_Latn" as open_clip's tokenizer has it).
    ValueError for a model that takes none or a code it does not know.
    Other options: see _TowerModel.
    """

    tower_name = "text"
    default_repo = DEFAULT_TEXT_REPO
    _supported = ({
        "model": DEFAULT_TEXT_REPO, "dim": 512,
        "description": "CLIP ViT-B/32 text tower (OpenAI weights, fastembed's ONNX export), 77 tokens; "
                       "fastclip's default",
        "license": "mit", "size_in_GB": 0.25, "sources": {"hf": DEFAULT_TEXT_REPO}, "model_file": "model.onnx",
        "additional_files": [], "tasks": {},
    },)

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        concurrent_runs: int | None = None,
        tuning: Tuning | None = None,
        language: str | None = None,
        **options: Any,
    ):
        tuning = tuning if tuning is not None else Tuning()
        if concurrent_runs is not None:
            tuning = replace(tuning, concurrent_runs=max(1, int(concurrent_runs)))
        if tuning.concurrent_runs is None:
            tuning = replace(tuning, concurrent_runs=max(1, int(options.get("threads") or available_cores())))
        self.concurrent_runs = tuning.concurrent_runs
        super().__init__(model_name, tuning=tuning, **options)
        self._tokenizer = TextTokenizer(self.folder / self.spec.tokenizer, self.spec, language=language)
        self.language = self._tokenizer.language
        self._worker_options["language"] = language
        self._bulk: tuple[LoadedTower, ThreadPoolExecutor] | None = None
        self._bulk_lock = threading.Lock()

    def query_embed(self, query: str | Iterable[str], **kw: Any) -> Iterator[np.ndarray]:
        """fastembed's name for embedding search queries; CLIP uses no query prefix, so this is `embed`."""
        return self.embed(query, **kw)

    def passage_embed(self, texts: Iterable[str], **kw: Any) -> Iterator[np.ndarray]:
        """fastembed's name for embedding documents; CLIP uses no passage prefix, so this is `embed`."""
        return self.embed(texts, **kw)

    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> np.ndarray:
        """The int64 token ids the model sees, padded to the longest text (or the context length)."""
        return self._tokenizer.encode_batch(list(texts), truncate=truncate)

    def embed(
        self,
        texts: Iterable[str] | str,
        batch_size: int = 256,
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
        _check_common(batch_size, errors)
        _check_parallel(parallel)
        self._check_open()
        if isinstance(texts, str):
            texts = [texts]  # one sentence, not a stream of characters
        if parallel is not None:
            from .bulk.pool import pooled_embed  # the process machinery is imported only when used

            return pooled_embed(self, texts, batch_size, parallel, normalize=normalize, truncate=truncate,
                                errors=errors)
        return (row for batch in self._batches(texts, batch_size, normalize, truncate, errors) for row in batch.rows())

    def embed_batches(self, texts: Iterable[str] | str, batch_size: int = 256, *, normalize: bool = True,
                      truncate: bool = True, errors: str = "raise") -> Iterator[EmbeddingBatch]:
        """Yield one EmbeddingBatch per `batch_size` consecutive texts, in input order (computed a
        bucketing window at a time, see below). errors="raise" raises the first failing text's
        TextError once the batches before it were yielded; "skip" leaves it in `failures`."""
        _check_common(batch_size, errors)
        self._check_open()
        if isinstance(texts, str):
            texts = [texts]
        return self._batches(texts, batch_size, normalize, truncate, errors)

    # Length bucketing: texts are tokenized `tuning.text_bucket_window` batches at a time, sorted by
    # token count and run `tuning.text_run_rows` at a time (at most batch_size), so each run is padded
    # to about its own texts' length rather than to the longest text of an input-order batch. The
    # vectors are the same (the causal mask, or the attention mask, keeps padding out of the real
    # tokens) and come out in input order. Measured on ViT-B/32, 2 cores, 3-20 word texts: sorting
    # ~1.5x, and runs of 32 sorted texts ~1.2x more than runs of 256 (smaller activations stay in cache).
    def _batches(self, texts, batch_size, normalize, truncate, errors) -> Iterator[EmbeddingBatch]:
        numbered = iter(texts)
        start = 0
        window = batch_size * self.tuning.text_bucket_window if self._bucketing() else batch_size
        while chunk := list(itertools.islice(numbered, window)):
            done = self.embed_batch(chunk, start_index=start, normalize=normalize, truncate=truncate,
                                    batch_size=batch_size)
            for batch in _split(done, batch_size):
                if errors == "raise" and batch.failures:
                    raise batch.first_failure()
                yield batch
            start += len(chunk)

    def embed_batch(
        self,
        texts: Sequence[str],
        *,
        start_index: int = 0,
        normalize: bool = True,
        truncate: bool = True,
        batch_size: int = 256,
    ) -> EmbeddingBatch:
        """tokenize → run → normalize for one list of texts, in input order.

        Never raises for one text that cannot be embedded (not a str; too long with truncate=False):
        it lands in `failures` (keyed by start_index + its position) and has no row in `vectors`.
        With a dynamic-length graph and more texts than one run takes (batch_size, at most
        tuning.text_run_rows on CPU), the texts are sorted by length and run in groups (see above);
        otherwise they run in input-order batches of batch_size.
        """
        self._check_open()
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        failures: dict[int, FastClipError] = {
            start_index + i: TextTypeError(start_index + i, f"expected str, got {type(t).__module__}.{type(t).__qualname__}")
            for i, t in enumerate(texts) if not isinstance(t, str)
        }

        def good() -> list:
            return [t for i, t in enumerate(texts) if start_index + i not in failures] if failures else texts

        try:
            vectors = self._vectors(good(), normalize, truncate, batch_size)
        except TextError:
            # Rare (truncate=False, malformed unicode): find the texts at fault one by one, run the rest.
            failures.update(self._failing(texts, start_index, truncate, failures))
            vectors = self._vectors(good(), normalize, truncate, batch_size)
        return EmbeddingBatch(start_index=start_index, count=len(texts), vectors=vectors, failures=failures)

    def _failing(self, texts: list, start_index: int, truncate: bool, known: dict) -> dict[int, FastClipError]:
        found: dict[int, FastClipError] = {}
        for i, text in enumerate(texts):
            if start_index + i not in known:
                try:
                    self._tokenizer.encode_batch([text], start_index=start_index + i, truncate=truncate)
                except TextError as exc:
                    found[start_index + i] = exc
        return found

    def _vectors(self, texts: list, normalize: bool, truncate: bool, batch_size: int) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        # Small runs pay on CPU; a GPU wants the whole batch in one run.
        rows = batch_size if self.device == "cuda" else min(batch_size, self.tuning.text_run_rows)
        if self._bucketing() and len(texts) > rows:
            return self._run_sorted(self._feeds_and_lengths(texts, 0, truncate), rows, normalize)
        if len(texts) <= batch_size:
            return _run(self._tower, self.spec, self._feeds(texts, 0, truncate), normalize)
        return np.concatenate([
            _run(self._tower, self.spec, self._feeds(texts[i : i + batch_size], i, truncate), normalize)
            for i in range(0, len(texts), batch_size)
        ])

    def _bucketing(self) -> bool:
        return self.spec.dynamic_length and self.tuning.text_bucket_window > 1

    def _feeds(self, chunk: list, start: int, truncate: bool) -> dict[str, np.ndarray]:
        return self._feeds_and_lengths(chunk, start, truncate)[0]

    def _feeds_and_lengths(self, chunk: list, start: int, truncate: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(graph inputs, real tokens per text). The lengths come from the tokenizer's attention mask, not from
        the first end token: a masked-mean tower (XLM-R, mT5) reads every real token, and a text may
        spell an end token inside itself."""
        ids, mask = self._tokenizer.encode_batch_with_mask(chunk, start_index=start, truncate=truncate)
        feeds = {self.spec.input_name: ids}
        if self.spec.attention_mask_input:
            feeds[self.spec.attention_mask_input] = mask
        return feeds, mask.sum(axis=1)

    def _run_sorted(self, feeds_lengths: tuple[dict[str, np.ndarray], np.ndarray], rows: int,
                    normalize: bool) -> np.ndarray:
        feeds, lengths = feeds_lengths
        ids = feeds[self.spec.input_name]
        order = np.argsort(lengths, kind="stable")
        runs = [order[b : b + rows] for b in range(0, len(ids), rows)]
        # Padding on the left (padding_side="left") puts the real tokens last: keep the last `width` columns.
        left = self.spec.padding_side == "left"

        def run(picked: np.ndarray, tower: LoadedTower = self._tower) -> np.ndarray:
            width = max(int(lengths[picked].max()), 1)
            cols = slice(ids.shape[1] - width, None) if left else slice(0, width)
            return _run(tower, self.spec, {k: v[picked, cols] for k, v in feeds.items()}, normalize)

        bulk = self._bulk_runner() if len(runs) >= self._bulk_min_runs else None
        if bulk is None:
            results = map(run, runs)
        else:
            tower, pool = bulk
            results = pool.map(lambda picked: run(picked, tower), runs)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for picked, vectors in zip(runs, results):
            out[picked] = vectors
        return out

    # Why a second session: onnxruntime splits every operator of a run across its threads and waits
    # for the slowest, so on small text runs the cores idle at each of the ~400 barriers, and more so
    # when the host steals a core for a moment. Independent one-thread runs side by side never wait
    # for each other. Measured on 2 cores, ViT-B/32 text, runs of 32 sorted texts: +4 % texts/s on a
    # quiet host, +23-26 % while the VM was being slowed down (benchmark run: 307 -> 377 texts/s), +56-88 %
    # with another process busy on one core. One text's latency on a one-thread session is 10.8 ms vs
    # 6.4 ms, which is why short jobs stay on the multi-threaded session.
    _bulk_min_runs = 8

    def _bulk_runner(self) -> tuple[LoadedTower, ThreadPoolExecutor] | None:
        if self.concurrent_runs < 2 or self.device != "cpu":
            return None
        bulk = self._bulk
        if bulk is None:
            # Under a lock: threads starting large jobs together must open ONE second session, not one each.
            with self._bulk_lock:
                self._check_open()
                if self._bulk is None:
                    self._bulk = (self._open_bulk_tower(),
                                  ThreadPoolExecutor(self.concurrent_runs, thread_name_prefix="fastclip-text"))
                bulk = self._bulk
        return bulk

    def _open_bulk_tower(self) -> LoadedTower:
        """The second, one-thread session: the very model bytes the first one verified where the
        loaded tower can reopen itself, else the same file opened again."""
        tower = self._tower
        reopen = getattr(tower, "reopen", None)
        if callable(reopen):
            return reopen(threads=1)
        return open_tower(self.folder, self.spec, name=self.tower_name, providers=[CPU], threads=1,
                          precision=self.precision, announce=False)

    def _close_runners(self) -> None:
        with self._bulk_lock:
            bulk, self._bulk = self._bulk, None
        if bulk is not None:
            bulk[1].shutdown(wait=True, cancel_futures=True)
            if hasattr(bulk[0], "close"):
                bulk[0].close()


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
        language: str | None = None,
        **common: Any,
    ):
        self.images = ImageEmbedding(
            model_name or DEFAULT_VISION_REPO, exif_transpose=exif_transpose, fast=fast, workers=workers, **common
        )
        self.texts = TextEmbedding(model_name or DEFAULT_TEXT_REPO, concurrent_runs=concurrent_runs, language=language,
                                   **common)
        if self.images.dim != self.texts.dim:
            raise ModelError(
                f"vision tower gives {self.images.dim}-d vectors, text tower {self.texts.dim}-d: not one CLIP model"
            )
        self.logit_scale = self.images.manifest.logit_scale
        self.logit_bias = self.images.manifest.logit_bias
        self.scoring = self.images.manifest.scoring

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

    def embed_images(self, images: Iterable[Any], batch_size: int = 32, parallel: int | None = None,
                     **kw: Any) -> Iterator[np.ndarray | None]:
        return self.images.embed(images, batch_size, parallel, **kw)

    def embed_texts(self, texts: Iterable[str] | str, batch_size: int = 256, parallel: int | None = None,
                    **kw: Any) -> Iterator[np.ndarray]:
        return self.texts.embed(texts, batch_size, parallel, **kw)

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """Cosine similarity between every row of `a` and every row of `b` (vectors or stacks of them)."""
        a2 = l2_normalize(np.atleast_2d(np.asarray(list(a) if not hasattr(a, "shape") else a, dtype=np.float32)))
        b2 = l2_normalize(np.atleast_2d(np.asarray(list(b) if not hasattr(b, "shape") else b, dtype=np.float32)))
        return a2 @ b2.T

    def classify(
        self, images: Iterable[Any], labels: Sequence[str], *, template: str = "a photo of a {}.", batch_size: int = 32
    ) -> np.ndarray:
        """Zero-shot probabilities, shape (n_images, n_labels), as the model was trained to score: a softmax
        over the labels (CLIP) or an independent sigmoid per label (SigLIP); see fastclip.families.score."""
        if isinstance(labels, str) or not labels:
            raise ValueError("labels must be a non-empty list of strings")
        prompts = [template.format(label) for label in labels]
        text = np.stack(list(self.texts.embed(prompts)))
        image = np.stack(list(self.images.embed(images, batch_size)))
        return SCORERS[self.scoring](image @ text.T, self.logit_scale, self.logit_bias)

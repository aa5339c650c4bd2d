"""The runners: what turns a stream of inputs into batches of vectors behind the public classes.

Each public class *has* one runner (composition): ImageEmbedding an `ImageRunner` (decode threads
reading ahead of the model), TextEmbedding a `TextRunner` (length bucketing, a second one-thread
session for large jobs). A runner owns its threads and sessions and ends them in `close()`. Both do
preprocess → batch → `run` (one onnxruntime run, L2-normalized) → EmbeddingBatch, so the lazy
generators, the process pool and Ray compute vectors the same way.

`Tuning` is the one documented place for scheduling choices (decode threads, text bucketing,
concurrent text runs, onnxruntime spin-waiting), so benchmarks and users set them by name.

`embed(parallel=N)` runs on the process pool (fastclip.pool), runtime-level code beside this module: it
imports only the batch type, the errors, `WorkerSpec` and `available_cores`, so the towers import it
directly, on first use.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .batch import EmbeddingBatch
from .errors import FastClipError, ImageError, TextError, TextTypeError
from .images import ImagePreprocessor
from .manifest import ImageSpec, TextSpec, TowerSpec
from .session import OnnxSession
from .text import TextTokenizer

__all__ = ["Tuning", "ImageRunner", "TextRunner", "available_cores", "l2_normalize", "run"]


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one, e.g. in a container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Tuning:
    """Scheduling knobs. None of them changes a vector beyond float rounding (max abs diff <= 1e-6).

    decode_workers: image decode + preprocess threads running ahead of the model (None: min(4, cores);
        0: decode inline on the calling thread).
    read_ahead: batches of images decoded ahead of the one the model runs (with decode workers).
    text_bucket_window: texts are tokenized this many batches at a time and sorted by length, so each
        run is padded to about its own texts' length (0 or 1: input-order batches, no sorting).
    text_run_rows: texts per onnxruntime run inside a sorted window on CPU (a GPU runs whole batches).
    concurrent_runs: on CPU, large text jobs (8+ runs) go to a second one-thread session, this many runs
        at a time (None: `threads` if given, else one per core; 1: off).
    allow_spinning: onnxruntime's idle intra-op threads spin-wait between operators (None: automatic,
        off when image decode workers share the cores with an fp32/fp16 model, on otherwise).
    """

    decode_workers: int | None = None
    read_ahead: int = 2
    text_bucket_window: int = 8
    text_run_rows: int = 32
    concurrent_runs: int | None = None
    allow_spinning: bool | None = None

    def __post_init__(self) -> None:
        for name in ("decode_workers", "concurrent_runs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"Tuning.{name} must be a non-negative integer or None, got {value!r}")
        for name in ("read_ahead", "text_run_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Tuning.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.text_bucket_window, int) or self.text_bucket_window < 0:
            raise ValueError(f"Tuning.text_bucket_window must be a non-negative integer, got {self.text_bucket_window!r}")
        if self.allow_spinning not in (None, True, False):
            raise ValueError(f"Tuning.allow_spinning must be True, False or None, got {self.allow_spinning!r}")


class _Runner:
    """What both runners share: the model's tower (loaded on first use), its closed state, its threads."""

    def __init__(self, tower: Callable[[], OnnxSession], dim: int, owner: str):
        self._tower = tower
        self.dim = dim
        self._owner = owner  # how errors name the object, e.g. "TextEmbedding('models/b32')"
        self._lock = threading.Lock()
        self._closed = False

    def _threads(self, make: Callable[[], Any], slot: str) -> Any:
        """The object in attribute `slot`, made on first use under the lock: threads starting large jobs
        together must start ONE pool (or second session), not one each."""
        made = getattr(self, slot)
        if made is None:
            with self._lock:
                if self._closed:
                    raise FastClipError(f"{self._owner} is closed")
                if getattr(self, slot) is None:
                    setattr(self, slot, make())
                made = getattr(self, slot)
        return made

    def _empty(self) -> np.ndarray:
        return np.empty((0, self.dim), dtype=np.float32)


# ------------------------------------------------------------------------------------------- images

class ImageRunner(_Runner):
    """Images → decode + preprocess (on decode threads, `read_ahead` batches ahead) → one run per batch."""

    def __init__(self, spec: ImageSpec, preprocess: ImagePreprocessor, tower: Callable[[], OnnxSession], *,
                 dim: int, workers: int, read_ahead: int, owner: str):
        super().__init__(tower, dim, owner)
        self.spec = spec
        self._preprocess = preprocess
        self.workers = workers
        self.read_ahead = read_ahead
        self._pool: ThreadPoolExecutor | None = None

    def stream(self, images: Iterable[Any], batch_size: int, normalize: bool, errors: str) -> Iterator[EmbeddingBatch]:
        """embed_batch over consecutive batches, with the next `read_ahead` batches decoded in the
        decode threads (Pillow and numpy release the GIL) while the model runs on the current one;
        the bound keeps memory flat. Closing the generator cancels the decodes not yet started."""
        numbered = iter(images)
        pool = self._decode_pool()
        depth = 1 + (self.read_ahead if pool is not None else 0)
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
                    raise failures[min(failures)]  # before the model runs on a batch whose rows are not wanted
                yield self._run(current.start, len(current.results), pixels, failures, normalize, None)
        finally:
            for batch in pending:
                batch.cancel()

    def embed_batch(self, images: list[Any], start: int, normalize: bool, batch_size: int | None) -> EmbeddingBatch:
        pool = self._decode_pool() if len(images) > 1 else None  # one image: no thread hop
        pixels, failures = self._start(images, start, pool).collect()
        return self._run(start, len(images), pixels, failures, normalize, batch_size)

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

    def _run(self, start: int, count: int, pixels: np.ndarray, failures: dict, normalize: bool,
             batch_size: int | None) -> EmbeddingBatch:
        if not len(pixels):
            vectors = self._empty()
        elif batch_size is None or len(pixels) <= batch_size:
            vectors = run(self._tower(), self.spec, {self.spec.input_name: pixels}, normalize)
        else:
            vectors = np.concatenate([run(self._tower(), self.spec, {self.spec.input_name: pixels[i : i + batch_size]},
                                          normalize) for i in range(0, len(pixels), batch_size)])
        return EmbeddingBatch(start_index=start, count=count, vectors=vectors, failures=failures)

    def _decode_pool(self) -> ThreadPoolExecutor | None:
        if self.workers <= 0:
            return None
        return self._threads(lambda: ThreadPoolExecutor(self.workers, thread_name_prefix="fastclip-decode"), "_pool")

    def close(self) -> None:
        """End the decode threads; decodes queued and not started are cancelled."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


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


# -------------------------------------------------------------------------------------------- texts

class TextRunner(_Runner):
    """Texts → tokenize → (sorted by length on a dynamic-length graph) runs → vectors in input order."""

    def __init__(self, spec: TextSpec, tokenizer: TextTokenizer, tower: Callable[[], OnnxSession], *,
                 dim: int, tuning: Tuning, owner: str):
        super().__init__(tower, dim, owner)
        self.spec = spec
        self._tokenizer = tokenizer
        self.tuning = tuning
        self.concurrent_runs = tuning.concurrent_runs
        self._second: tuple[OnnxSession, ThreadPoolExecutor] | None = None

    # Length bucketing: texts are tokenized `tuning.text_bucket_window` batches at a time, sorted by
    # token count and run `tuning.text_run_rows` at a time (at most batch_size), so each run is padded
    # to about its own texts' length rather than to the longest text of an input-order batch. The
    # vectors are the same (the causal mask, or the attention mask, keeps padding out of the real
    # tokens) and come out in input order. Measured on ViT-B/32, 2 cores, 3-20 word texts: sorting
    # ~1.5x, and runs of 32 sorted texts ~1.2x more than runs of 256 (smaller activations stay in cache).
    def batches(self, texts: Iterable[Any], batch_size: int, normalize: bool, truncate: bool,
                errors: str) -> Iterator[EmbeddingBatch]:
        numbered = iter(texts)
        start = 0
        window = batch_size * self.tuning.text_bucket_window if self._bucketing() else batch_size
        while chunk := list(itertools.islice(numbered, window)):
            done = self.embed_batch(chunk, start, normalize, truncate, batch_size)
            for batch in done.split(batch_size):
                if errors == "raise" and batch.failures:
                    raise batch.first_failure()
                yield batch
            start += len(chunk)

    def embed_batch(self, texts: list[Any], start: int, normalize: bool, truncate: bool,
                    batch_size: int) -> EmbeddingBatch:
        failures: dict[int, FastClipError] = {
            start + i: TextTypeError(start + i, f"expected str, got {type(t).__module__}.{type(t).__qualname__}")
            for i, t in enumerate(texts) if not isinstance(t, str)
        }

        def good() -> list:
            return [t for i, t in enumerate(texts) if start + i not in failures] if failures else texts

        try:
            vectors = self._vectors(good(), normalize, truncate, batch_size)
        except TextError:
            # Rare (truncate=False, malformed unicode): find the texts at fault one by one, run the rest.
            failures.update(self._failing(texts, start, truncate, failures))
            vectors = self._vectors(good(), normalize, truncate, batch_size)
        return EmbeddingBatch(start_index=start, count=len(texts), vectors=vectors, failures=failures)

    def _failing(self, texts: list, start: int, truncate: bool, known: dict) -> dict[int, FastClipError]:
        found: dict[int, FastClipError] = {}
        for i, text in enumerate(texts):
            if start + i not in known:
                try:
                    self._tokenizer.encode_batch([text], start_index=start + i, truncate=truncate)
                except TextError as exc:
                    found[start + i] = exc
        return found

    def _vectors(self, texts: list, normalize: bool, truncate: bool, batch_size: int) -> np.ndarray:
        if not texts:
            return self._empty()
        tower = self._tower()
        # Small runs pay on CPU; a GPU wants the whole batch in one run.
        rows = batch_size if tower.device == "cuda" else min(batch_size, self.tuning.text_run_rows)
        if self._bucketing() and len(texts) > rows:
            return self._run_sorted(*self._feeds_and_lengths(texts, 0, truncate), rows, normalize)
        if len(texts) <= batch_size:
            return run(tower, self.spec, self._feeds(texts, 0, truncate), normalize)
        return np.concatenate([
            run(tower, self.spec, self._feeds(texts[i : i + batch_size], i, truncate), normalize)
            for i in range(0, len(texts), batch_size)
        ])

    def _bucketing(self) -> bool:
        # Fixed-length graphs (SigLIP, Immich) gain from the runs on concurrent sessions too (rows run unsliced).
        return self.tuning.text_bucket_window > 1

    def _feeds(self, chunk: list, start: int, truncate: bool) -> dict[str, np.ndarray]:
        return self._feeds_and_lengths(chunk, start, truncate)[0]

    def _feeds_and_lengths(self, chunk: list, start: int, truncate: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(graph inputs, real tokens per text). The lengths come from the tokenizer's attention mask, not from
        the first end token: a masked-mean tower (XLM-R, mT5) reads every real token, and a text may
        spell an end token inside itself."""
        ids, mask = self._tokenizer.encode_batch_with_mask(chunk, start_index=start, truncate=truncate)
        dtype = self.spec.ids_dtype  # int32 for graphs traced with int32 ids (Immich)
        feeds = {self.spec.input_name: ids.astype(dtype, copy=False)}
        if self.spec.attention_mask_input:
            feeds[self.spec.attention_mask_input] = mask.astype(dtype, copy=False)
        return feeds, mask.sum(axis=1)

    def _run_sorted(self, feeds: dict[str, np.ndarray], lengths: np.ndarray, rows: int, normalize: bool) -> np.ndarray:
        ids = feeds[self.spec.input_name]
        order = np.argsort(lengths, kind="stable")
        runs = [order[b : b + rows] for b in range(0, len(ids), rows)]
        # Padding on the left (padding_side="left") puts the real tokens last: keep the last `width` columns.
        left = self.spec.padding_side == "left"

        def run_one(picked: np.ndarray, tower: OnnxSession = self._tower()) -> np.ndarray:
            width = max(int(lengths[picked].max()), 1) if self.spec.dynamic_length else ids.shape[1]
            cols = slice(ids.shape[1] - width, None) if left else slice(0, width)
            return run(tower, self.spec, {k: v[picked, cols] for k, v in feeds.items()}, normalize)

        second = self._second_session() if len(runs) >= self._second_min_runs else None
        if second is None:
            results = map(run_one, runs)
        else:
            tower, pool = second
            results = pool.map(lambda picked: run_one(picked, tower), runs)
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
    _second_min_runs = 8

    def _second_session(self) -> tuple[OnnxSession, ThreadPoolExecutor] | None:
        if self.concurrent_runs < 2 or self._tower().device != "cpu":
            return None
        return self._threads(lambda: (self._open_second_session(),
                                      ThreadPoolExecutor(self.concurrent_runs, thread_name_prefix="fastclip-text")),
                             "_second")

    def _open_second_session(self) -> OnnxSession:
        """One onnxruntime thread on the very model bytes the first session verified."""
        return self._tower().reopen(threads=1)

    def close(self) -> None:
        """End the concurrent-run threads and release the second session."""
        with self._lock:
            self._closed = True
            second, self._second = self._second, None
        if second is not None:
            second[1].shutdown(wait=True, cancel_futures=True)
            second[0].close()


# ------------------------------------------------------------------------------------ run, normalize

def run(loaded: OnnxSession, spec: TowerSpec, feeds: dict[str, np.ndarray], normalize: bool) -> np.ndarray:
    """One onnxruntime run of a tower: float32 (n, dim), L2-normalized unless asked not to be.

    A graph traced with a fixed batch (`spec.batch`, Immich's 1) runs that many rows at a time, the last group
    filled up with copies of its last row whose outputs are dropped: rows never interact in these towers."""
    n, fixed = len(next(iter(feeds.values()))), spec.batch or 0
    if not fixed or n == fixed:
        out = loaded.session.run([spec.output_name], feeds)[0]
    else:
        parts = []
        for start in range(0, n, fixed):
            group = {k: v[start : start + fixed] for k, v in feeds.items()}
            short = fixed - len(next(iter(group.values())))
            group = {k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in group.items()} if short else group
            parts.append(np.asarray(loaded.session.run([spec.output_name], group)[0])[: fixed - short])
        out = np.concatenate(parts)
    out = np.asarray(out, dtype=np.float32)  # fp16 graphs may return half precision
    return l2_normalize(out) if normalize else out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)

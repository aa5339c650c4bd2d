"""The public classes: ImageEmbedding, TextEmbedding and CLIP.

Each one reads top-down: resolve the model → read its manifest → open the session → preprocess
→ batch → run → L2-normalize → yield. `embed` consumes its input lazily and yields one vector per
input, in input order, so memory stays flat on an unbounded stream.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import ImageError, ModelError, TextError
from .images import ImagePreprocessor
from .manifest import Manifest, Tower
from .model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO, load_manifest, resolve_folder
from .session import LoadedTower, check_graph, open_tower
from .text import TextTokenizer

ERRORS = ("raise", "skip")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


class _TowerModel:
    """What both embedding classes share: resolve the model, read its manifest, open one tower.

    Options (keyword-only, for both classes): cache_dir, local_files_only, revision (hub
    resolution); providers, threads (onnxruntime); precision ("fp32", "fp16", "int8": pins a
    variant, default fp32 on CPU and fp16 on GPU when present); verify (check the file's sha256).
    """

    tower_name = ""
    default_repo = ""

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        providers: list | None = None,
        threads: int | None = None,
        precision: str | None = None,
        verify: bool = False,
        _allow_spinning: bool = True,
    ):
        self.model_name = str(model_name or self.default_repo)
        self.folder = resolve_folder(
            self.model_name, cache_dir=cache_dir, local_files_only=local_files_only, revision=revision
        )
        self.manifest: Manifest = load_manifest(self.folder)
        self.spec = getattr(self.manifest, self.tower_name)
        if self.spec is None:
            raise ModelError(f"{self.model_name}: this model folder has no {self.tower_name} tower")
        self._tower = open_tower(
            self.folder, self.spec, name=self.tower_name, providers=providers, threads=threads,
            precision=precision, verify=verify, allow_spinning=_allow_spinning,
        )
        check_graph(self._tower, self.spec, self.manifest.embed_dim, f"{self.folder} ({self.tower_name} tower)")

    @property
    def dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def precision(self) -> str:
        return self._tower.precision

    @property
    def device(self) -> str:
        return self._tower.device


def _check_common(batch_size: int, errors: str) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")


def _run(loaded: LoadedTower, spec: Tower, feeds: dict[str, np.ndarray], normalize: bool) -> np.ndarray:
    out = loaded.session.run([spec.output_name], feeds)[0]
    out = np.asarray(out, dtype=np.float32)  # fp16 graphs may return half precision
    return l2_normalize(out) if normalize else out


class ImageEmbedding(_TowerModel):
    """Image vectors from a CLIP vision tower.

    model_name: a fastclip model folder, a fastembed-style tower folder, or a hub repo id
    (default: fastembed's published CLIP ViT-B/32 vision tower).
    exif_transpose: apply EXIF orientation (default) so a photo is embedded the way a person sees it;
    False reproduces reference pipelines (open_clip, transformers) bit for bit, which ignore EXIF.
    fast: True decodes JPEGs at reduced size (at least twice the crop) before the bicubic resize:
    ~2.4x faster preprocessing, vectors within a cosine of ~3e-5 of exact on the benchmark photos.
    "max" reduces down to the crop size: ~3.6x faster, within ~1e-4. Off by default.
    workers: threads that decode and preprocess the next images while the model runs (0 = inline).
    Other options: see _TowerModel.
    """

    tower_name = "vision"
    default_repo = DEFAULT_VISION_REPO

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        exif_transpose: bool = True,
        fast: bool | str = False,
        workers: int | None = None,
        **options: Any,
    ):
        self.workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
        # Decode threads share the cores with onnxruntime, whose idle threads would otherwise spin-wait
        # between operators. Measured on 2 cores, ViT-B/32: not spinning gives fp32 +5-7 % img/s at
        # batch 32 and +20 % at batch 1; int8's shorter operators lose ~3 % to the wake-up latency.
        spin = self.workers == 0 or options.get("precision") == "int8"
        super().__init__(model_name, _allow_spinning=spin, **options)
        self._preprocess = ImagePreprocessor(self.spec, exif_transpose=exif_transpose, fast=fast)

    def embed(
        self,
        images: Iterable[Any],
        batch_size: int = 32,
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
        """
        _check_common(batch_size, errors)
        return self._embed(images, batch_size, normalize, errors, on_error)

    def _embed(self, images, batch_size, normalize, errors, on_error) -> Iterator[np.ndarray | None]:
        for indices, pixels, failed in self._batches(images, batch_size, errors):
            vectors = iter(_run(self._tower, self.spec, {self.spec.input_name: pixels}, normalize) if len(pixels) else ())
            for i in indices:
                if i in failed:
                    if on_error is not None:
                        on_error(failed[i])
                    yield None
                else:
                    yield next(vectors)

    def _prepare(self, item: Any, index: int, errors: str) -> np.ndarray | ImageError:
        try:
            return self._preprocess(item, index)
        except ImageError as exc:
            if errors == "skip":
                return exc  # reported in input order by the consuming thread, not from a worker
            raise

    def _batches(self, images: Iterable[Any], batch_size: int, errors: str):
        """(input indices, stacked pixels of the good ones, {failed index: ImageError}) per batch.

        With workers, up to two batches of images are decoded ahead in threads (Pillow and numpy
        release the GIL) while the model runs on the current one; the bound keeps memory flat.
        """
        numbered = enumerate(images)
        if self.workers <= 0:
            while chunk := list(itertools.islice(numbered, batch_size)):
                yield self._assemble([(i, self._prepare(item, i, errors)) for i, item in chunk])
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="fastclip-decode") as pool:
            pending: deque = deque()

            def fill() -> None:
                for i, item in itertools.islice(numbered, 2 * batch_size - len(pending)):
                    pending.append((i, pool.submit(self._prepare, item, i, errors)))

            fill()
            while pending:
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                fill()  # queue the next images before waiting on this batch
                yield self._assemble([(i, future.result()) for i, future in chunk])

    @staticmethod
    def _assemble(done: list[tuple[int, np.ndarray | ImageError]]):
        good = [a for _, a in done if isinstance(a, np.ndarray)]
        failed = {i: a for i, a in done if isinstance(a, ImageError)}
        pixels = np.stack(good) if good else np.empty((0,), np.float32)
        return [i for i, _ in done], pixels, failed


class TextEmbedding(_TowerModel):
    """Text vectors from a CLIP text tower (default: fastembed's published CLIP ViT-B/32 text tower).

    concurrent_runs: on CPU, large jobs (a window of at least 8 runs, e.g. 256+ texts) go to a second
    session with one onnxruntime thread, run that many at a time (default: one per core; 1 = off).
    Same vectors; the second session is opened on the first large job and costs the model's size
    in memory again (~250 MB for ViT-B/32). Short jobs keep the multi-threaded session and its latency.
    Other options: see _TowerModel.
    """

    tower_name = "text"
    default_repo = DEFAULT_TEXT_REPO

    def __init__(self, model_name: str | Path | None = None, *, concurrent_runs: int | None = None, **options: Any):
        super().__init__(model_name, **options)
        self._tokenizer = TextTokenizer(self.folder / self.spec.tokenizer, self.spec)
        if concurrent_runs is None:
            concurrent_runs = options.get("threads") or os.cpu_count() or 1
        self.concurrent_runs = max(1, int(concurrent_runs))
        self._bulk: tuple[LoadedTower, ThreadPoolExecutor] | None = None

    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> np.ndarray:
        """The int64 token ids the model sees, padded to the longest text (or the context length)."""
        return self._tokenizer.encode_batch(list(texts), truncate=truncate)

    def embed(
        self, texts: Iterable[str] | str, batch_size: int = 256, *, normalize: bool = True, truncate: bool = True
    ) -> Iterator[np.ndarray]:
        """Yield one float32 vector of shape (dim,) per text, in input order.

        Texts longer than the context are cut with the end token kept last (as the reference
        tokenizers do); truncate=False raises TextError naming the text's index instead.
        """
        _check_common(batch_size, "raise")
        if isinstance(texts, str):
            texts = [texts]  # one sentence, not a stream of characters
        return self._embed(texts, batch_size, normalize, truncate)

    # Length bucketing: texts are tokenized `_bucket_window` batches at a time, sorted by token count
    # and run `_run_rows` at a time (at most batch_size), so each run is padded to about its own
    # texts' length rather than to the longest text of an input-order batch. The vectors are the
    # same (the causal mask, or the attention mask, keeps padding out of the real tokens) and come
    # out in input order. Measured on ViT-B/32, 2 cores, 3-20 word texts: sorting ~1.5x, and runs of
    # 32 sorted texts ~1.2x more than runs of 256 (smaller activations stay in cache).
    # _bucket_window 0 or 1: input-order batches of batch_size, as a plain loop would run them.
    _bucket_window = 8
    _run_rows = 32

    def _embed(self, texts, batch_size, normalize, truncate) -> Iterator[np.ndarray]:
        numbered = iter(texts)
        start = 0
        bucketing = self.spec.dynamic_length and self._bucket_window > 1
        window = batch_size * self._bucket_window if bucketing else batch_size
        # Small runs pay on CPU; a GPU wants the whole batch in one run.
        rows = batch_size if self.device == "cuda" else min(batch_size, self._run_rows)
        while chunk := list(itertools.islice(numbered, window)):
            if bucketing and len(chunk) > rows:
                yield from self._embed_bucketed(chunk, start, batch_size, rows, normalize, truncate)
            else:
                yield from _run(self._tower, self.spec, self._feeds(chunk, start, truncate), normalize)
            start += len(chunk)

    def _feeds(self, chunk: list, start: int, truncate: bool) -> dict[str, np.ndarray]:
        if self.spec.attention_mask_input:
            ids, mask = self._tokenizer.encode_batch_with_mask(chunk, start_index=start, truncate=truncate)
            return {self.spec.input_name: ids, self.spec.attention_mask_input: mask}
        return {self.spec.input_name: self._tokenizer.encode_batch(chunk, start_index=start, truncate=truncate)}

    def _embed_bucketed(self, chunk, start, batch_size, rows, normalize, truncate) -> Iterator[np.ndarray]:
        try:
            feeds = self._feeds(chunk, start, truncate)
        except TextError:
            # Raise where batch-by-batch processing would: after the vectors of the batches before it.
            for i in range(0, len(chunk), batch_size):
                yield from _run(self._tower, self.spec, self._feeds(chunk[i : i + batch_size], start + i, truncate), normalize)
            raise AssertionError("unreachable: the window's TextError did not recur batch by batch")
        ids = feeds[self.spec.input_name]
        if self.spec.attention_mask_input:
            lengths = feeds[self.spec.attention_mask_input].sum(axis=1)
        else:  # real tokens run up to and including the first end token
            lengths = np.argmax(ids == self.spec.eos_token_id, axis=1) + 1
        order = np.argsort(lengths, kind="stable")
        runs = [order[b : b + rows] for b in range(0, len(chunk), rows)]

        def run(picked: np.ndarray, tower: LoadedTower = self._tower) -> np.ndarray:
            width = max(int(lengths[picked].max()), 1)
            return _run(tower, self.spec, {k: v[picked, :width] for k, v in feeds.items()}, normalize)

        bulk = self._bulk_runner() if len(runs) >= self._bulk_min_runs else None
        if bulk is None:
            results = map(run, runs)
        else:
            tower, pool = bulk
            results = pool.map(lambda picked: run(picked, tower), runs)
        out = None
        for picked, vectors in zip(runs, results):
            if out is None:
                out = np.empty((len(chunk), vectors.shape[1]), dtype=np.float32)
            out[picked] = vectors
        yield from out

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
        if self._bulk is None:
            tower = open_tower(self.folder, self.spec, name=self.tower_name, providers=["CPUExecutionProvider"],
                               threads=1, precision=self.precision, announce=False)
            self._bulk = (tower, ThreadPoolExecutor(self.concurrent_runs, thread_name_prefix="fastclip-text"))
        return self._bulk


class CLIP:
    """Both towers of one model, with similarity and zero-shot classification.

    model_name: one fastclip folder or repo holding both towers. With no model named, fastembed's
    published CLIP ViT-B/32 vision and text repos are used together.
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

    def embed_images(self, images: Iterable[Any], batch_size: int = 32, **kw: Any) -> Iterator[np.ndarray | None]:
        return self.images.embed(images, batch_size, **kw)

    def embed_texts(self, texts: Iterable[str] | str, batch_size: int = 256, **kw: Any) -> Iterator[np.ndarray]:
        return self.texts.embed(texts, batch_size, **kw)

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """Cosine similarity between every row of `a` and every row of `b` (vectors or stacks of them)."""
        a2 = l2_normalize(np.atleast_2d(np.asarray(list(a) if not hasattr(a, "shape") else a, dtype=np.float32)))
        b2 = l2_normalize(np.atleast_2d(np.asarray(list(b) if not hasattr(b, "shape") else b, dtype=np.float32)))
        return a2 @ b2.T

    def classify(
        self, images: Iterable[Any], labels: Sequence[str], *, template: str = "a photo of a {}.", batch_size: int = 32
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

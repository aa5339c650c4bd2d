"""The two embedding classes: ImageEmbedding and TextEmbedding (CLIP, both at once, is in fastclip.clip).

Each reads top-down: resolve the model → read its manifest → open the session (fastclip.tower) → hand
the inputs to its runner (fastclip.runner: preprocess → batch → run → L2-normalize) → yield. One
batch-level call, `embed_batch`, embeds one list of inputs; `embed_batches` yields EmbeddingBatch
objects over a stream; `embed` yields one vector per input, in input order, consuming its input lazily
so memory stays flat on an unbounded stream. The process pool (fastclip.bulk) and Ray build the model
again in other processes from `worker_spec()` and call the same `embed_batch`.

The threads an object uses (image decoding, concurrent text runs) and its second text session belong
to its runner: `close()` (or leaving a `with` block) ends them; dropping or closing a generator
mid-stream cancels the decodes it had queued.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .batch import EmbeddingBatch, check_batching, one_or_many
from .defaults import IMAGE_BATCH, TEXT_BATCH
from .compat import FastembedTextNames
from .errors import ImageError
from .images import ImagePreprocessor
from .model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO
from .runner import ImageRunner, TextRunner, Tuning, available_cores
from .text import TextTokenizer
from .tower import TowerModel

__all__ = ["ImageEmbedding", "TextEmbedding"]


class ImageEmbedding(TowerModel):
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
    Other options: see fastclip.tower.TowerModel.
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
        normalize=False returns the graph's output as it is: unit vectors already where the graph
        normalizes itself (Immich's; `self.spec.output_normalized`).
        """
        return self._rows(images, batch_size, parallel, normalize=normalize, errors=errors, on_error=on_error)

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
        return self._runner.embed_batch(list(one_or_many(images)), start_index, normalize, batch_size)


class TextEmbedding(TowerModel, FastembedTextNames):
    """Text vectors from a CLIP text tower (default: fastembed's published CLIP ViT-B/32 text tower).

    concurrent_runs: on CPU, large jobs (a window of at least 8 runs, e.g. 256+ texts) go to a second
    session with one onnxruntime thread, run that many at a time (default: one per core; 1 = off).
    Same vectors; the second session is opened on the first large job and costs the model's size
    in memory again (~250 MB for ViT-B/32). Short jobs keep the multi-threaded session and its latency.
    The same as tuning=Tuning(concurrent_runs=...), which it overrides.
    language: the source language of the texts, for towers that take one (NLLB: a FLORES-200 code such as
    "fra_Latn"; the manifest lists the codes and the default, "eng_Latn" as open_clip's tokenizer has it).
    ValueError for a model that takes none or a code it does not know.
    Other options: see fastclip.tower.TowerModel.
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
        self._options["language"] = language
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
        normalize=False: the graph's output as it is (unit vectors for a graph that normalizes itself, Immich's).
        """
        return self._rows(texts, batch_size, parallel, normalize=normalize, truncate=truncate, errors=errors)

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
        With more texts than one run takes (batch_size, at most tuning.text_run_rows on CPU), the texts
        are sorted by length and run in groups (each padded to its longest on a dynamic-length graph);
        with tuning.text_bucket_window <= 1 they run in input-order batches of batch_size.
        """
        self._check_open()
        return self._runner.embed_batch(list(one_or_many(texts)), start_index, normalize, truncate, batch_size)

"""fastclip on Ray Data, one module per job:

    callables.py   ImageEmbedder / TextEmbedder: the `Dataset.map_batches` callables (one model per actor)
    resources.py   plan_resources: actors, reservations and threads that do not deadlock; map_batches_kwargs
    datasets.py    embed_images / embed_texts: a Dataset (or paths, texts) in, a lazy Dataset of vectors out
    job.py         embed_to_parquet: the `fastclip embed --engine ray` job, a resumable folder of Parquet parts

The public names are re-exported here and by fastclip.ray. Ray itself is imported only when used:
`import fastclip` never needs it (the `ray` extra: `pip install ".[ray]"` in the checkout). Inside this
package `import ray` is an absolute import and finds the real Ray package.
"""

from __future__ import annotations

from .callables import ImageEmbedder, TextEmbedder
from .datasets import embed_images, embed_texts
from .job import EmbedSummary, embed_to_parquet
from .resources import map_batches_kwargs, plan_resources

__all__ = [
    "EmbedSummary",
    "ImageEmbedder",
    "TextEmbedder",
    "embed_images",
    "embed_texts",
    "embed_to_parquet",
    "map_batches_kwargs",
    "plan_resources",
]

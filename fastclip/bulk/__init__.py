"""Bulk embedding beside the runtime: a local process pool (pool.py) and Ray (ray.py).

These modules import the runtime's public names, never the other way round: `embed(..., parallel=N)`
reaches `fastclip.bulk.pool` through the slot the package's `__init__` fills
(`fastclip.runner.set_parallel_embed`), which imports the pool only when it is used. Ray is imported
only by `fastclip.bulk.ray`.
"""

from ..errors import WorkerError
from .pool import EmbeddingPool, assign_devices

__all__ = ["EmbeddingPool", "WorkerError", "assign_devices"]

"""Bulk embedding beside the runtime: a local process pool (pool.py) and Ray (ray.py).

These modules import the runtime, never the other way round; `embed(..., parallel=N)` imports
`fastclip.bulk.pool` only when it is used, and Ray is imported only by `fastclip.bulk.ray`.
"""

from .pool import EmbeddingPool, WorkerError, assign_devices

__all__ = ["EmbeddingPool", "WorkerError", "assign_devices"]

"""/health: alive and working. Every worker thread alive, no batch running past stall_timeout, and a tower
idle for a while answers one probe input through its real queue within the same limit (a wedged session
seen before any request finds it). While the models load it answers 200 "loading": alive; /ready tells
traffic to wait."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import first_line
from .batcher import QueueFull
from .context import Context
from .lifecycle import Models

log = logging.getLogger("fastclip.serve")

__all__ = ["health", "Prober"]

PROBE_AFTER = 10.0  # a tower whose last batch is older than this gets a probe input


async def health(server: Context, request: Request) -> Response:
    models = server.models
    if models.load_error:
        return JSONResponse({"status": "failed", "error": models.load_error}, status_code=503)
    if not models.ready.is_set():
        return JSONResponse({"status": "loading"})
    stall = server.limits.stall_timeout
    problems = [p for m in models.loaded.values() for b in m.batchers.values() if (p := b.health(stall))]
    if not problems:
        problems = await server.prober.probe(stall)
    if problems:
        log.error("fastclip serve: unhealthy: %s", "; ".join(problems))
        return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ok"})


class Prober:
    """Sends one known-good input through each idle tower's queue; one probe round at a time."""

    def __init__(self, models: Models):
        self.models = models
        self._lock = asyncio.Lock()
        self._image = _probe_image()

    async def probe(self, timeout: float) -> list[str]:
        async with self._lock:
            loop = asyncio.get_running_loop()
            for model in self.models.loaded.values():
                for tower, batcher in model.batchers.items():
                    if batcher.queued or time.monotonic() - batcher.last_batch_done < PROBE_AFTER:
                        continue  # busy or recently working: no probe needed
                    try:
                        job = batcher.submit([self._image if tower == "image" else "a photo"], loop)
                    except QueueFull:
                        continue
                    try:
                        (row,) = await asyncio.wait_for(asyncio.shield(job.future), timeout or None)
                    except asyncio.TimeoutError:
                        batcher.cancel(job)
                        return [f"{batcher.name}: a probe input got no answer within {timeout:g} s"]
                    except Exception as exc:  # noqa: BLE001 - the model failed on a known-good input
                        return [f"{batcher.name}: a probe input failed: {first_line(exc)}"]
                    if not isinstance(row, np.ndarray) or not np.isfinite(row).all():
                        return [f"{batcher.name}: a probe input gave no finite vector"]
        return []


def _probe_image() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, format="PNG")
    return buf.getvalue()

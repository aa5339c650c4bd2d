"""One request's inputs on their way through the towers: each routed to its tower and made ready (image
strings to bytes, URLs fetched), queued on the batchers, waited for, and put back in input order.

Nothing is queued before every input was checked, so with errors="raise" a bad input answers 400 at no
cost of decode or inference.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Sequence

import anyio
import numpy as np
from starlette.requests import Request

from ..errors import first_line
from .batcher import Batcher, QueueFull
from .errors import ClientGone, GatewayTimeout
from .inputs import MODALITIES, BadRequest, InputError, image_bytes, modality_of
from .limits import Limits
from .metrics import Metrics
from .models import ServedModel
from .urls import UrlFetcher

__all__ = ["Prepared", "prepare", "run", "count", "reason"]


def reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or first_line(exc)


@dataclass
class Prepared:
    """Per input: its modality (None when it could not be told), and the item its tower takes (a text,
    image bytes) or, in `failures`, its InputError."""

    modalities: list[str | None]
    items: list[Any]
    failures: dict[int, InputError]

    def indices(self, modality: str) -> list[int]:
        return [i for i, m in enumerate(self.modalities) if m == modality and i not in self.failures]

    def towers(self) -> list[str]:
        """The modalities with inputs to embed, in a fixed order."""
        return [m for m in MODALITIES if self.indices(m)]

    def items_for(self, modality: str) -> list[Any]:
        return [self.items[i] for i in self.indices(modality)]

    def results(self, rows_by_modality: dict[str, list]) -> list[Any]:
        """One vector or error per input, in input order."""
        results: list[Any] = [None] * len(self.items)
        for i, exc in self.failures.items():
            results[i] = exc
        for modality, rows in rows_by_modality.items():
            for i, row in zip(self.indices(modality), rows):
                results[i] = row
        return results


async def prepare(values: list, modality: str | None, model: ServedModel, limits: Limits, fetcher: UrlFetcher,
                  errors: str, big: bool) -> Prepared:
    """Route and ready every input (in a thread for large bodies); with errors="raise" the lowest failing
    index raises its InputError here, before anything is queued."""
    if modality is not None and modality not in model.batchers:
        raise BadRequest(f"model {model.name!r} has no {modality} tower (it embeds {', '.join(model.modalities)})",
                         param="modality")

    def ready() -> Prepared:
        prepared = Prepared([], [], {})
        for i, value in enumerate(values):
            kind = modality
            try:
                kind = kind or modality_of(value, i)
                prepared.items.append(_item(kind, value, i, model, limits))
            except InputError as exc:
                prepared.items.append(None)
                prepared.failures[i] = exc
            prepared.modalities.append(kind)
        return prepared

    prepared = await anyio.to_thread.run_sync(ready) if big else ready()
    urls = [i for i in prepared.indices("image") if isinstance(prepared.items[i], str)]
    if urls:
        await fetcher.fetch_into(prepared.items, urls, prepared.failures)
    if prepared.failures and errors == "raise":
        raise prepared.failures[min(prepared.failures)]
    return prepared


def _item(modality: str, value: Any, index: int, model: ServedModel, limits: Limits) -> Any:
    """What the tower takes for one input: image bytes (or a URL to fetch), a text."""
    if modality not in model.batchers:
        raise InputError(index, f"model {model.name!r} has no {modality} tower (it embeds "
                                f"{', '.join(model.modalities)})")
    if modality == "image":
        return image_bytes(value, index, limits)
    if not isinstance(value, str):
        raise InputError(index, f"expected a string, got {type(value).__name__}")
    return value


async def run(request: Request, work: Sequence[tuple[Batcher, list]], limits: Limits) -> list[list]:
    """Queue each (batcher, items) and wait for all rows; the client hanging up cancels what is still queued."""
    loop = asyncio.get_running_loop()
    jobs = []
    try:
        for batcher, items in work:
            jobs.append((batcher, batcher.submit(items, loop)))
    except QueueFull:
        for batcher, job in jobs:
            batcher.cancel(job)
        raise
    gone = asyncio.ensure_future(_disconnected(request))
    everything = asyncio.ensure_future(asyncio.gather(*(job.future for _, job in jobs)))
    finished = False
    try:
        done, _ = await asyncio.wait({everything, gone}, timeout=limits.request_timeout or None,
                                     return_when=asyncio.FIRST_COMPLETED)
        if everything in done:
            rows = everything.result()  # a failed batch raises here (500)
            finished = True
            return rows
        if gone in done:
            raise ClientGone()
        raise GatewayTimeout(f"no answer within {limits.request_timeout:g} s (--request-timeout)")
    finally:
        gone.cancel()
        if not finished:  # whatever ended the wait, the inputs still queued are nobody's now
            for batcher, job in jobs:
                batcher.cancel(job)
            if not everything.done():
                everything.cancel()
            everything.add_done_callback(lambda f: f.cancelled() or f.exception())


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def count(metrics: Metrics, model: ServedModel, modalities: list[str | None], results: list[Any]) -> None:
    """fastclip_inputs_total per input, under the tower it went to ("unknown": told apart from none)."""
    tally: dict[tuple[str, str], int] = {}
    for modality, result in zip(modalities, results):
        key = (modality or "unknown", "ok" if isinstance(result, np.ndarray) else "failed")
        tally[key] = tally.get(key, 0) + 1
    for (tower, outcome), n in tally.items():
        metrics.inputs.labels(model.name, tower, outcome).inc(n)

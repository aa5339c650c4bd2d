"""What a route handler reads of its server: `app.Server` is one. Handlers take this, so routes.py and
health.py need not import app.py (which imports them to build its route table)."""

from __future__ import annotations

from typing import Protocol

from .lifecycle import Models
from .limits import ByteBudget, Limits
from .metrics import Metrics
from .urls import UrlFetcher

__all__ = ["Context", "Probe"]


class Probe(Protocol):
    async def probe(self, timeout: float) -> list[str]:
        """Problems found by one probe round through the idle towers (empty: all answered)."""


class Context(Protocol):
    limits: Limits
    metrics: Metrics
    budget: ByteBudget
    models: Models
    fetcher: UrlFetcher
    prober: Probe

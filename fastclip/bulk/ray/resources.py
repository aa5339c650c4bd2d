"""Resources for an actor pool on a Ray cluster: how many actors, what each reserves, how many onnxruntime
threads each runs, and how this Ray version asks for a fixed pool. Ray is imported only when called."""

from __future__ import annotations

import logging
import math
from typing import Any

from ...errors import FastClipError
from ...hints import install_hint

log = logging.getLogger("fastclip")


def import_ray():
    """The real Ray package with Ray Data, or FastClipError naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise FastClipError(f"the Ray integration needs Ray Data: {install_hint('ray')}") from None
    return ray


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def map_batches_kwargs(actors: int) -> dict[str, Any]:
    """How this Ray asks for a fixed pool of `actors`: `compute=ActorPoolStrategy(size=n)` before 2.9 and
    again from 2.51 (where `concurrency` is deprecated), `concurrency=n` from 2.9 to 2.50 (where `compute`
    was the deprecated one)."""
    ray = import_ray()
    version = _version(ray.__version__)
    if (2, 9) <= version < (2, 51):
        return {"concurrency": actors}
    return {"compute": ray.data.ActorPoolStrategy(size=actors)}


def plan_resources(
    *,
    concurrency: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    threads: int | None = None,
    nodes: list[dict] | None = None,
) -> dict[str, Any]:
    """Actors, per-actor reservations and onnxruntime threads that run on the cluster without deadlock.

    Ray Data's read tasks need a free CPU each. Actors that reserve every CPU of every node leave none, and
    the job stalls with no error (measured: a 2-CPU local cluster with 2 actors of num_cpus=1). So, per node
    of C CPUs: n = max(1, C // threads) actors (threads: onnxruntime threads per actor, default min(4, C)),
    each reserving (C - 1) / n CPUs (at most `threads`), which keeps one CPU per node for reading. On a
    2-core machine: one actor, reserving 1 CPU, running onnxruntime on both cores. With num_gpus: one actor
    per GPU share, reserving 1 CPU (or less on small nodes). Explicit arguments win.
    Returns {"actors", "num_cpus", "num_gpus", "threads"}.
    """
    if nodes is None:
        ray = import_ray()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sorted(float(n.get("Resources", {}).get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("Resources", {}).get("GPU", 0)) for n in nodes)
    smallest = next((c for c in cpus if c >= 1), 1.0)
    if threads is None:
        threads = max(1, min(4, int(smallest)))
    if num_gpus:
        if gpus <= 0:
            raise FastClipError(f"num_gpus={num_gpus} asked for, but the Ray cluster has no GPU")
        actors = concurrency or max(1, int(gpus // num_gpus))
        reserve = num_cpus if num_cpus is not None else min(1.0, max(smallest - 1, 0.25))
        return {"actors": actors, "num_cpus": reserve, "num_gpus": num_gpus, "threads": threads}
    per_node = [max(1, int(c // threads)) for c in cpus if c >= 1] or [1]
    actors = concurrency or sum(per_node)
    if num_cpus is None:
        # Rounded down to 1/100 CPU so a node never ends up with 0.999 free by float error.
        num_cpus = max(0.01, math.floor(min(float(threads), (smallest - 1) / min(per_node)) * 100) / 100)
    if actors * num_cpus > sum(cpus) - 1:
        log.warning("fastclip.ray: %d actors x num_cpus=%g reserve %g of the cluster's %g CPUs and may leave none "
                    "for Ray Data's read tasks (the job then stalls without an error); lower concurrency or num_cpus",
                    actors, num_cpus, actors * num_cpus, sum(cpus))
    return {"actors": actors, "num_cpus": num_cpus, "num_gpus": None, "threads": threads}

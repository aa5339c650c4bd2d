"""The process pool (fastclip.pool): parity with the in-process path, order, errors, lifetime.

Every pool spawns processes that import onnxruntime (~1-2 s each on 2 cores), so the tests share
one module-scoped pool where they can and start only the few others that must die or be closed.
"""

from __future__ import annotations

import gc
import itertools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from fastclip import CLIP, EmbeddingPool, ImageEmbedding, ImageError, ModelError, TextEmbedding, TextError, WorkerError, WorkerSpec
from fastclip.pool import _portable, assign_devices, split_threads
from fastclip.errors import ImageTypeError, TextTypeError
from fastclip.providers import cuda_device_count
from support.photos import SENTENCES, photo_array, write_photos


_SHARED_POOL: set[int] = set()


def _workers(process: psutil.Process | None = None) -> list[psutil.Process]:
    """Worker processes under `process` (default: this one). multiprocessing's resource tracker, one
    helper per parent started with the first spawned process and ended with the parent, is not one."""
    found = []
    for child in (process or psutil.Process()).children(recursive=True):
        if child.pid in _SHARED_POOL:
            continue  # the module-scoped pool below, alive until this module's tests end
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _wait_no_workers(timeout: float = 10.0) -> list[psutil.Process]:
    """Children still alive after `timeout` (a hang guard, not a speed target)."""
    _, alive = psutil.wait_procs(_workers(), timeout=timeout)
    return alive


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def image_pool(tiny_openclip_export):
    model = ImageEmbedding(tiny_openclip_export, lazy_load=True)
    with EmbeddingPool(model, 2) as pool:
        _SHARED_POOL.update(pool.pids)
        yield model, pool


def test_devices_and_threads_are_split_round_robin():
    assert assign_devices(5, [0, 1]) == [0, 1, 0, 1, 0]
    assert assign_devices(2, [3, 5, 7]) == [3, 5]
    assert assign_devices(3, None) == [None, None, None]
    assert split_threads(2, cores=16) == 8
    assert split_threads(3, cores=16) == 5
    assert split_threads(16, cores=2) == 1


def test_worker_spec_pickles_and_opens_the_same_model(tiny_openclip_export, photo_files):
    model = ImageEmbedding(tiny_openclip_export, lazy_load=True, fast=True, workers=3)
    spec = pickle.loads(pickle.dumps(model.worker_spec()))
    assert isinstance(spec, WorkerSpec) and (spec.kind, spec.batch_size) == ("image", 32)
    assert spec.folder == str(tiny_openclip_export.resolve())  # resolved here: a worker never resolves a name
    same = spec.open()
    assert type(same) is ImageEmbedding and same.workers == 3 and same._session.loaded is not None
    np.testing.assert_array_equal(np.stack(list(same.embed(photo_files))), np.stack(list(model.embed(photo_files))))
    assert spec.open(threads=1).workers == 0  # a one-thread worker decodes inline
    assert spec.open(threads=2).workers == 2  # more: as many decode threads as onnxruntime threads
    text = TextEmbedding(tiny_openclip_export, concurrent_runs=2, lazy_load=True).worker_spec()
    assert (text.kind, text.batch_size) == ("text", 256)
    assert text.open().concurrent_runs == 2 and text.open(threads=2).concurrent_runs == 1  # processes run side by side
    with pytest.raises(TypeError, match="worker_spec"):
        EmbeddingPool("models/clip", 2)


def test_errors_cross_processes_with_their_fields():
    for exc in (ImageError(3, "a.jpg", "truncated"), ImageTypeError(4, "<int>", "not an image"),
                TextError(5, "too long"), TextTypeError(6, "expected str"), WorkerError("died", pid=7, inputs=(0, 31))):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and vars(back) == vars(exc)

    class Odd(Exception):  # a constructor that pickling cannot call again: the parent's recv() would fail
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    assert isinstance(_portable(ValueError("plain")), ValueError)
    wrapped = _portable(Odd(1, 2), (32, 63))
    assert type(wrapped) is WorkerError and str(wrapped) == "Odd: 1 and 2" and wrapped.inputs == (32, 63)
    assert pickle.loads(pickle.dumps(wrapped)).pid == os.getpid()


def test_pool_images_equal_in_process_vector_by_vector(image_pool, photo_files, tmp_path):
    model, pool = image_pool
    assert model._session.loaded is None  # lazy_load: the parent process never opened a session for the pool
    assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    items = [*photo_files, bad, *photo_files[:4], photo_files[0].read_bytes()]
    seen_pool, seen_here = [], []
    got = list(pool.embed(items, batch_size=3, errors="skip", on_error=seen_pool.append))
    want = list(model.embed(items, batch_size=3, errors="skip", on_error=seen_here.append))
    assert len(got) == len(want) == len(items)
    bad_at = len(photo_files)
    assert got[bad_at] is None and want[bad_at] is None
    for a, b in zip(got, want):
        if b is not None:
            assert np.abs(a - b).max() <= 1e-6
    assert [(e.index, e.source) for e in seen_pool] == [(e.index, e.source) for e in seen_here] == [(bad_at, str(bad))]
    # Rows are the inputs' own: the repeated photos give the vectors of their first occurrence.
    np.testing.assert_allclose(got[bad_at + 1], got[0], atol=1e-6)

    with pytest.raises(ImageError) as info:
        list(pool.embed(items, batch_size=3))
    assert info.value.index == bad_at and str(bad) in str(info.value)

    # The batch call, as the model's own: the same batches, failures by input index, no rows regrouped.
    pooled = list(pool.embed_batches(items, batch_size=3, errors="skip"))
    local = list(model.embed_batches(items, batch_size=3, errors="skip"))
    assert [(b.start_index, b.count, sorted(b.failures)) for b in pooled] == \
           [(b.start_index, b.count, sorted(b.failures)) for b in local]
    assert max(np.abs(a.vectors - b.vectors).max() for a, b in zip(pooled, local)) <= 1e-6

    # A stream closed early leaves its batches in flight; the next stream must not receive them.
    early = pool.embed(itertools.cycle(photo_files), batch_size=2)
    next(early)
    early.close()
    again = list(pool.embed(photo_files[:5], batch_size=2))
    for a, b in zip(again, want[:5]):
        assert np.abs(a - b).max() <= 1e-6
    assert all(psutil.pid_exists(pid) for pid in pool.pids)  # the same two workers all along

    # An error raised inside a worker (here: an option images do not take) arrives as itself, with the
    # worker and the inputs as its cause; the pool stays usable.
    with pytest.raises(TypeError, match="truncate") as info:
        list(pool.embed(photo_files[:2], truncate=False))
    assert isinstance(info.value.__cause__, WorkerError) and info.value.__cause__.pid in pool.pids
    assert info.value.__cause__.inputs == (0, 1)
    assert len(list(pool.embed(photo_files[:3], batch_size=2))) == 3


@pytest.mark.skipif(cuda_device_count()[0] > 0, reason="needs a machine where cuda=True cannot be met")
def test_a_worker_that_cannot_load_raises_the_models_own_error(tiny_openclip_export):
    model = TextEmbedding(tiny_openclip_export, lazy_load=True, cuda=True)  # lazy: only the worker loads it
    with pytest.raises(ModelError, match="cuda=True") as info:
        EmbeddingPool(model, 1)
    assert isinstance(info.value.__cause__, WorkerError) and info.value.__cause__.pid not in (None, os.getpid())
    assert _wait_no_workers() == []


def test_parallel_texts_equal_in_process_and_leave_nothing_running(tiny_openclip_export):
    import random

    rng = random.Random(1)
    words = " ".join(SENTENCES).split()
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 40))) for _ in range(300)]
    model = TextEmbedding(tiny_openclip_export)
    got = np.stack(list(model.embed(texts, batch_size=32, parallel=2)))
    want = np.stack(list(model.embed(texts, batch_size=32)))
    assert got.shape == want.shape == (300, model.dim)
    assert np.abs(got - want).max() <= 1e-6
    assert _wait_no_workers() == []
    with pytest.raises(TextError, match="#1"):
        list(model.embed(["short", "word " * 200], parallel=1, truncate=False))
    assert _wait_no_workers() == []


def test_parallel_routes_through_clip_and_is_validated(tiny_openclip_export, monkeypatch):
    import fastclip.pool as pool_mod

    calls = []
    monkeypatch.setattr(pool_mod, "pooled_embed", lambda model, items, bs, n, **kw: calls.append((model, bs, n)) or iter(()))
    clip = CLIP(tiny_openclip_export)
    list(clip.embed_images(["x.jpg"], 8, parallel=3))
    list(clip.embed_texts(["a dog"], parallel=0))
    assert [(type(m).__name__, bs, n) for m, bs, n in calls] == [("ImageEmbedding", 8, 3), ("TextEmbedding", 256, 0)]
    for wrong in (-1, 1.5, True):
        with pytest.raises(ValueError, match="parallel"):
            clip.embed_texts(["a dog"], parallel=wrong)


def test_killed_worker_fails_the_call_within_seconds(tiny_openclip_export, photo_files):
    model = ImageEmbedding(tiny_openclip_export, lazy_load=True)
    stream = model.embed(itertools.cycle(photo_files), batch_size=4, parallel=2)
    next(stream)
    workers = _workers()
    assert len(workers) == 2
    victim = workers[0].pid
    os.kill(victim, signal.SIGKILL)
    t = time.perf_counter()
    with pytest.raises(WorkerError) as info:
        for _ in stream:
            pass
    assert time.perf_counter() - t < 30  # hang guard: a death is seen through the worker's sentinel at once
    message = str(info.value)
    assert f"process {victim}" in message and "SIGKILL" in message and "inputs #" in message
    assert info.value.pid == victim and info.value.inputs is not None
    first, last = info.value.inputs
    assert last - first == 3 and os.path.basename(str(photo_files[first % len(photo_files)])) in message
    assert _wait_no_workers() == []


def test_closing_or_dropping_a_parallel_stream_ends_its_workers(tiny_openclip_export):
    model = TextEmbedding(tiny_openclip_export, lazy_load=True)
    stream = model.embed((f"text number {i}" for i in itertools.count()), batch_size=16, parallel=2)
    next(stream)
    assert len(_workers()) == 2
    t = time.perf_counter()
    stream.close()
    assert _wait_no_workers() == []
    assert time.perf_counter() - t < 10  # hang guard

    stream = model.embed((f"text number {i}" for i in itertools.count()), batch_size=16, parallel=1)
    next(stream)
    assert len(_workers()) == 1
    del stream
    gc.collect()
    assert _wait_no_workers() == []


SCRIPT = """
import sys

import numpy as np

from fastclip import TextEmbedding


def main():
    model = TextEmbedding(sys.argv[1])
    texts = [f"a photo of {i} dogs and a cat" for i in range(100)]
    serial = np.stack(list(model.embed(texts, batch_size=16)))
    print("BULK_IMPORTED", "fastclip.bulk" in sys.modules, flush=True)
    parallel = np.stack(list(model.embed(texts, batch_size=16, parallel=2)))
    print("MAXDIFF", float(np.abs(parallel - serial).max()), flush=True)

    def endless():
        for i in range(10**9):
            yield f"text number {i}"

    for n, _ in enumerate(model.embed(endless(), batch_size=16, parallel=2)):
        if n == 64:
            print("RUNNING", flush=True)


if __name__ == "__main__":
    main()
"""


def test_a_guarded_script_runs_under_spawn_and_ctrl_c_ends_its_workers(tiny_openclip_export, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_openclip_export)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.split())
            if line.startswith("RUNNING"):
                break
        assert ["BULK_IMPORTED", "False"] in lines  # the runtime alone does not import the pool machinery
        diff = [float(w[1]) for w in lines if w[0] == "MAXDIFF"]
        assert diff and diff[0] <= 1e-6
        workers = _workers(psutil.Process(proc.pid))
        assert len(workers) == 2
        proc.send_signal(signal.SIGINT)  # to the parent only: it must end its workers itself
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []



def test_at_most_depth_batches_per_worker_are_read_ahead(image_pool):
    """README: at most 2 batches per worker are in flight or waiting, whatever the input length - an
    endless input is pulled only that far ahead of what was consumed."""
    _, pool = image_pool
    assert pool.depth == 2
    image = photo_array("coffee")
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            if i > 500:  # an unbounded read-ahead fails here instead of hanging
                raise RuntimeError("the pool read 500 inputs ahead")
            yield image

    batch = 4
    stream = pool.embed(endless(), batch_size=batch)
    bound = pool.processes * pool.depth * batch
    for consumed in range(1, 4 * batch + 2):
        next(stream)
        # the batch being handed out, plus processes x depth batches sent or waiting
        assert len(pulled) <= -(-consumed // batch) * batch + bound, (consumed, len(pulled))
    assert len(pulled) >= bound  # it does read ahead, up to the bound
    stream.close()


PARENT = """
import sys, time
from fastclip import TextEmbedding
from fastclip import EmbeddingPool

if __name__ == "__main__":
    pool = EmbeddingPool(TextEmbedding(sys.argv[1], lazy_load=True), 2)
    list(pool.embed(["a dog", "a cat"]))
    print(" ".join(str(pid) for pid in pool.pids), flush=True)
    time.sleep(300)
"""


def test_workers_exit_when_their_parent_is_killed(tiny_openclip_export, tmp_path):
    """kill -9 of the parent (no cleanup runs there): each worker sees its pipe close and exits."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_openclip_export)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2, proc.stderr.read() if proc.poll() is not None else pids
        workers = [psutil.Process(pid) for pid in pids]
        assert all(w.is_running() for w in workers)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(workers, timeout=20)  # hang guard; they exit within a second here
    assert alive == [], [w.pid for w in alive]

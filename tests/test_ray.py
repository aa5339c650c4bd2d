"""The Ray integration on a real local Ray cluster (one per module, 2 CPUs like this machine): vectors equal
to in-process fastclip, error rows instead of failed jobs, resource planning that does not deadlock,
a clear error when an actor cannot find the model, and `fastclip embed --engine ray`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")

from support.photos import SENTENCES, write_photos

from fastclip import ImageEmbedding, TextEmbedding
from fastclip.hashing import tower_fingerprint
from fastclip.ray import ImageEmbedder, embed_images, embed_texts, plan_resources

TOL = 1e-6  # the bar: the same batch-level call runs in the actor, so only float rounding may differ


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The 2 CPUs of this machine: the configuration where actors reserving every CPU starve the read tasks.
    ray.init(num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def album(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """(folder, good photos, corrupt file) — JPEG, RGB PNG and a grayscale PNG, plus a truncated JPEG."""
    folder = tmp_path_factory.mktemp("ray-album")
    photos = write_photos(folder, names=("astronaut", "chelsea", "coffee", "rocket", "camera"))
    corrupt = folder / "99_corrupt.jpg"
    corrupt.write_bytes(photos[0].read_bytes()[:300])
    return folder, photos, corrupt


@pytest.fixture(scope="module")
def model(tiny_openclip_export) -> Path:
    return tiny_openclip_export


def exact(model, paths, **options) -> dict[str, np.ndarray]:
    with ImageEmbedding(str(model), **options) as m:
        return {str(p): v for p, v in zip(paths, m.embed([str(p) for p in paths], errors="skip")) if v is not None}


def rows_by(ds, key: str) -> dict:
    batch = ds.take_batch(10_000, batch_format="numpy")
    return {str(k): (np.asarray(e, dtype=np.float32), r) for k, e, r in zip(batch[key], batch["embedding"], batch["error"])}


def test_plan_never_reserves_every_cpu():
    two = plan_resources(nodes=[{"Alive": True, "Resources": {"CPU": 2.0}}])
    assert two == {"actors": 1, "num_cpus": 1.0, "num_gpus": None, "threads": 2}
    nodes = [{"Alive": True, "Resources": {"CPU": 16.0}}] * 3
    plan = plan_resources(nodes=nodes)
    assert plan["actors"] == 12 and plan["threads"] == 4
    assert 16 - 4 * plan["num_cpus"] >= 1  # a read task still fits on every node
    gpu = plan_resources(nodes=[{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}], num_gpus=1)
    assert (gpu["actors"], gpu["num_gpus"]) == (2, 1)


def test_fastclip_ray_imports_without_ray_and_leaves_ray_the_real_package():
    code = ("import sys, fastclip, fastclip.ray; assert 'ray' not in sys.modules, 'ray imported eagerly'; "
            "import ray; print(ray.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parts[-2:] == ("ray", "__init__.py"), proc.stdout


def test_plan_warns_when_asked_to_reserve_every_cpu(caplog):
    with caplog.at_level("WARNING", logger="fastclip"):
        plan_resources(concurrency=2, num_cpus=1, nodes=[{"Alive": True, "Resources": {"CPU": 2.0}}])
    assert "stalls" in caplog.text


def test_bytes_column_matches_in_process_and_corrupt_file_is_an_error_row(cluster, album, model):
    folder, photos, corrupt = album
    ds = ray.data.read_binary_files(str(folder), include_paths=True)
    out = ds.map_batches(ImageEmbedder, fn_constructor_kwargs={"model": str(model), "threads": 1}, batch_size=4,
                         compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    assert set(out.columns()) == {"path", "embedding", "error"}  # the raw bytes are not carried along
    rows = rows_by(out, "path")
    want = exact(model, photos)
    assert len(rows) == len(photos) + 1
    for path, vector in want.items():
        got, error = rows[path]
        assert error == ""
        assert got.dtype == np.float32 and got.shape == vector.shape
        assert np.abs(got - vector).max() <= TOL, path
    vector, error = rows[str(corrupt)]
    assert "cannot decode" in error or "not a recognised image" in error
    assert np.isnan(vector).all()


def test_image_column_from_read_images(cluster, album, model):
    """Ray decodes these itself; for files without EXIF rotation, palette or alpha the pixels are the same,
    gray ones included (Ray pads them to (1, H, W) in a mixed batch)."""
    _, photos, _ = album
    ds = ray.data.read_images([str(p) for p in photos], include_paths=True)
    out = ds.map_batches(ImageEmbedder, fn_constructor_kwargs={"model": str(model)}, batch_size=8,
                         compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    assert set(out.columns()) == {"path", "embedding", "error"}
    rows = {"/" + k.lstrip("/"): v for k, v in rows_by(out, "path").items()}  # Ray drops the leading "/"
    for path, vector in exact(model, photos).items():
        got, error = rows[path]
        assert error == "" and np.abs(got - vector).max() <= TOL, path


def test_helper_on_paths_hub_model(cluster, album, model, tmp_path):
    """embed_images on local paths, the model given as a hub repo id that each actor resolves (offline,
    from a seeded cache); the callables take and give numpy batches, Ray converts."""
    from test_model import seed_hub_cache

    folder, photos, corrupt = album
    cache = tmp_path / "hub"
    seed_hub_cache(cache, "fastclip-test/tiny-vision", model / "vision")
    hub = {"cache_dir": str(cache), "local_files_only": True}
    missing = folder / "gone.jpg"
    ds = embed_images([*photos, missing, corrupt], "fastclip-test/tiny-vision", batch_size=3, **hub)
    assert set(ds.columns()) == {"path", "embedding", "error"}
    by_path = rows_by(ds, "path")
    for path, vector in exact("fastclip-test/tiny-vision", photos, **hub).items():
        assert by_path[path][1] == ""
        assert np.abs(by_path[path][0] - vector).max() <= TOL
    assert by_path[str(missing)][1] == "file not found" and np.isnan(by_path[str(missing)][0]).all()
    assert by_path[str(corrupt)][1] and np.isnan(by_path[str(corrupt)][0]).all()


def test_texts_match_in_process_and_bad_row_is_an_error_row(cluster, model):
    texts = SENTENCES * 3
    ds = ray.data.from_items([{"text": t, "id": i} for i, t in enumerate(texts)] + [{"text": None, "id": len(texts)}])
    # The helper on a Dataset: map_batches(TextEmbedder, ...) with the planned resources.
    batch = embed_texts(ds, model, batch_size=16).take_batch(1000, batch_format="numpy")
    assert set(batch) == {"text", "id", "embedding", "error"}
    with TextEmbedding(str(model)) as m:
        want = np.stack(list(m.embed(texts)))
    order = np.argsort(batch["id"])
    got, errors = batch["embedding"][order], batch["error"][order]
    assert got.dtype == np.float32 and np.abs(got[: len(texts)] - want).max() <= TOL
    assert list(errors[: len(texts)]) == [""] * len(texts)
    assert "expected str" in errors[-1] and np.isnan(got[-1]).all()


def test_errors_raise_fails_the_job_naming_the_file(cluster, album, model):
    _, photos, corrupt = album
    ds = ray.data.from_items([{"path": str(p)} for p in (photos[0], corrupt)])
    out = ds.map_batches(ImageEmbedder, fn_constructor_kwargs={"model": str(model), "errors": "raise"}, batch_size=2,
                         compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    with pytest.raises(Exception, match="99_corrupt.jpg"):
        out.materialize()


def test_model_missing_on_a_node_is_a_clear_error(cluster, album, tmp_path):
    _, photos, _ = album
    ds = ray.data.from_items([{"path": str(photos[0])}])
    out = ds.map_batches(ImageEmbedder, fn_constructor_kwargs={"model": str(tmp_path / "no-model")}, batch_size=1,
                         compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    with pytest.raises(Exception) as info:
        out.materialize()
    message = str(info.value)
    assert "Ray node" in message and str(tmp_path / "no-model") in message and "working_dir" in message


def ray_cli(cluster, *args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastclip.cli", "embed", *map(str, args), "--engine", "ray", "--ray-address", cluster],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                                **(env or {})}, **kw)


def test_cli_engine_ray(cluster, album, model, tmp_path):
    from fastclip.sinks import read_embeddings

    folder, photos, corrupt = album
    out = tmp_path / "vectors"
    proc = ray_cli(cluster, folder, "--model", model, "--out", out, "--skip-errors", "--batch-size", 4,
                   "--rows-per-part", 3)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr  # one input failed: reported, the others written
    assert f"{len(photos)} images embedded, 1 failed" in stderr
    assert "99_corrupt.jpg" in stderr.splitlines()[-1]
    got = read_embeddings(out)  # every part, rows restored to input order
    assert got.items == sorted(str(p) for p in photos)
    assert (got.meta["rows"], got.meta["failed"]) == (len(photos), 1)
    with ImageEmbedding(str(model)) as m:
        assert got.meta["fingerprint"] == tower_fingerprint(m.folder, m.spec) and got.meta["model"] == str(model)
    want = exact(model, photos)
    for path, vector in zip(got.items, got.vectors):
        assert np.abs(vector - want[path]).max() <= TOL
    errors = [json.loads(line) for f in sorted(out.glob("_part-*.errors.jsonl")) for line in f.read_text().splitlines()]
    assert [(e["index"], e["path"]) for e in errors] == [(len(photos), str(corrupt))]
    # The folder is a Parquet dataset for any reader: service files start with "_" (no "lock" among the parts).
    import pandas as pd
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column_names == ["index", "path", "vector"] and table.num_rows == len(photos)
    order = np.argsort(table.column("index").to_numpy())
    assert np.array_equal(np.array(table.column("vector").to_pylist(), np.float32)[order], got.vectors)
    frame = pd.read_parquet(out).sort_values("index")
    assert frame["path"].tolist() == got.items and np.array_equal(np.stack(frame["vector"].to_numpy()), got.vectors)


@pytest.mark.slow
def test_cli_engine_ray_resumes_after_kill(cluster, model, tmp_path):
    """kill -9 of the CLI mid-run: the parts in place are kept, a rerun without --resume is refused, and
    --resume embeds only the rest: each input exactly once, the vectors those of the local engine."""
    from PIL import Image

    from fastclip.errors import OutputError
    from fastclip.sinks import read_embeddings

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):
        Image.fromarray(rng.integers(0, 256, (20 + i % 5, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    out = tmp_path / "parts"
    args = (folder, "--model", model, "--out", out, "--batch-size", 4, "--rows-per-part", 4)
    proc = ray_cli(cluster, *args, env={"FASTCLIP_FAULT": "slow"})  # 0.1 s after each part lands
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no part written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    import pyarrow.parquet as pq

    kept = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    done = sum(pq.read_metadata(out / name).num_rows for name in kept)
    assert len(kept) >= 3 and done < 60, sorted(kept)
    with pytest.raises(OutputError, match=f"holds {done} of the run's 60 inputs"):
        read_embeddings(out)  # incomplete: refused, naming how many inputs it holds
    refused = ray_cli(cluster, *args)
    assert refused.wait(timeout=120) == 2 and "--resume" in refused.stderr.read()
    started = time.monotonic()
    resumed = ray_cli(cluster, *args, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"{done} of 60 inputs were done" in stderr, stderr
    print(f"ray resume: {len(kept)} parts ({done} of 60 inputs) kept after kill -9, resumed run "
          f"{time.monotonic() - started:.1f} s")
    assert all((out / name).read_bytes() == data for name, data in kept.items())  # kept as they were
    got = read_embeddings(out)
    paths = sorted(str(p) for p in folder.iterdir())
    assert got.items == paths  # each input once, in input order
    want = exact(model, paths)
    assert max(np.abs(v - want[p]).max() for p, v in zip(got.items, got.vectors)) <= TOL

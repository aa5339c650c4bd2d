"""The `fastclip` command, end to end in subprocesses, on a tiny exported model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastclip import ImageEmbedding, TextEmbedding
from fastclip.hashing import tower_fingerprint
from fastclip.sinks import errors_path, partial_dir, read_embeddings
from support.photos import write_photos


def fastclip(*args, stdin: str | None = None, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fastclip.cli", *(a if isinstance(a, bytes) else str(a) for a in args)],
        input=stdin,
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("album")
    write_photos(folder / "a", names=("astronaut", "chelsea", "coffee"))
    write_photos(folder / "b", names=("rocket", "camera"))
    (folder / "b" / "notes.txt").write_text("not an image, and not picked up: wrong extension")
    return folder


@pytest.fixture(scope="module")
def album_with_corrupt(tmp_path_factory, photo_dir):
    import shutil

    folder = tmp_path_factory.mktemp("album-bad")
    shutil.copytree(photo_dir, folder, dirs_exist_ok=True)
    (folder / "a" / "01_zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    return folder


@pytest.mark.parametrize("args", [(), ("embed",), ("export",), ("info",)])
def test_help_exits_zero(args):
    result = fastclip(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: fastclip" in result.stdout


def test_embed_folder_rows_aligned_with_paths(tiny_openclip_export, photo_dir, tmp_path):
    out = tmp_path / "vectors.npy"
    result = fastclip("embed", photo_dir, "--model", tiny_openclip_export, "--out", out, "--batch-size", 2)
    assert result.returncode == 0, result.stderr
    got = read_embeddings(out)
    matrix, paths = got.vectors, got.items
    model = ImageEmbedding(tiny_openclip_export)
    assert matrix.shape == (5, model.dim) and len(paths) == 5
    assert paths == sorted(paths) and not any(p.endswith(".txt") for p in paths)
    for row, path in zip(matrix, paths):
        np.testing.assert_allclose(row, next(model.embed([path])), atol=1e-6)
    assert "5 images embedded, 0 failed" in result.stderr
    meta = got.meta
    assert meta["kind"] == "image" and meta["model"] == str(tiny_openclip_export) and meta["failed"] == 0
    assert meta["fingerprint"] == tower_fingerprint(model.folder, model.spec) and meta["precision"] == "fp32"
    assert meta["options"] == {"batch_size": 2, "fast": False, "exif_transpose": True}
    assert not errors_path(out).exists() and not partial_dir(out).exists()


def test_fast_and_no_exif_flags_reach_the_model(tiny_openclip_export, tmp_path):
    """--fast, --fast-max and --no-exif give the vectors of the matching ImageEmbedding options, recorded in
    the header; on these files each flag changes the vectors (a large JPEG, an EXIF-rotated one)."""
    from PIL import Image

    from support.photos import photo_array

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo_array("astronaut")).resize((1200, 1200)).save(folder / "a_big.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo_array("chelsea")).save(folder / "b_rotated.jpg", quality=95, exif=exif.tobytes())
    files = sorted(str(p) for p in folder.iterdir())
    runs = {(): {}, ("--fast",): {"fast": True}, ("--fast-max",): {"fast": "max"}, ("--no-exif",): {"exif_transpose": False}}
    got = {}
    for flags, options in runs.items():
        out = tmp_path / f"{'-'.join(flags) or 'default'}.npy"
        result = fastclip("embed", folder, "--model", tiny_openclip_export, "--out", out, *flags)
        assert result.returncode == 0, result.stderr
        read = read_embeddings(out)
        assert read.items == files
        assert read.meta["options"] == {"batch_size": 32, "fast": options.get("fast", False),
                                        "exif_transpose": options.get("exif_transpose", True)}
        want = np.stack(list(ImageEmbedding(tiny_openclip_export, **options).embed(files)))
        np.testing.assert_allclose(read.vectors, want, rtol=0, atol=1e-6)
        got[flags] = np.asarray(read.vectors)
    default = got[()]
    assert np.abs(got[("--fast",)][0] - default[0]).max() > 1e-4  # the big JPEG was drafted
    assert np.abs(got[("--fast-max",)][0] - got[("--fast",)][0]).max() > 1e-4  # further
    assert np.abs(got[("--no-exif",)][1] - default[1]).max() > 1e-3  # the rotated one read as stored
    np.testing.assert_array_equal(got[("--no-exif",)][0], default[0])


def test_corrupt_file_without_skip_errors_fails_and_writes_nothing(tiny_openclip_export, album_with_corrupt, tmp_path):
    out = tmp_path / "vectors.npy"
    args = ("embed", album_with_corrupt, "--model", tiny_openclip_export, "--out", out, "--batch-size", 1)
    result = fastclip(*args)
    assert result.returncode == 1
    assert "01_zz_corrupt.jpg" in result.stderr and "Traceback" not in result.stderr
    assert "the 2 inputs before its batch are kept" in result.stderr
    assert not out.exists()
    # The batches before the bad one are kept; with --skip-errors the same run completes from there.
    again = fastclip(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = fastclip(*args, "--resume", "--skip-errors")
    assert resumed.returncode == 1 and "resuming" in resumed.stderr and "5 images embedded, 1 failed" in resumed.stderr
    assert len(read_embeddings(out).items) == 5


def test_corrupt_file_with_skip_errors_is_left_out(tiny_openclip_export, album_with_corrupt, photo_dir, tmp_path):
    out = tmp_path / "vectors.npy"
    result = fastclip("embed", album_with_corrupt, "--model", tiny_openclip_export, "--out", out, "--skip-errors")
    assert result.returncode == 1  # something failed, even though the rest was written
    got = read_embeddings(out)
    paths, matrix = got.items, got.vectors
    assert len(paths) == matrix.shape[0] == 5 and got.meta["failed"] == 1
    failed = [json.loads(line) for line in errors_path(out).read_text().splitlines()]
    assert [f["path"] for f in failed] == [str(album_with_corrupt / "a" / "01_zz_corrupt.jpg")]
    assert not any("corrupt" in p for p in paths)
    assert "skipped" in result.stderr and "failed: " in result.stderr and "01_zz_corrupt.jpg" in result.stderr.splitlines()[-1]
    model = ImageEmbedding(tiny_openclip_export)
    for row, path in zip(matrix, paths):  # no row shifted against its path
        np.testing.assert_allclose(row, next(model.embed([path])), atol=1e-6)


def test_parquet_round_trip_and_stdin_paths(tiny_openclip_export, photo_dir, tmp_path):
    import pyarrow.parquet as pq

    listing = sorted(str(p) for p in photo_dir.rglob("*.jpg"))
    out = tmp_path / "v.parquet"
    result = fastclip("embed", "-", "--model", tiny_openclip_export, "--out", out, stdin="\n".join(listing) + "\n")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["path", "vector"]
    assert table.column("path").to_pylist() == listing
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    model = ImageEmbedding(tiny_openclip_export)
    np.testing.assert_allclose(vectors, np.stack(list(model.embed(listing))), atol=1e-6)


def test_texts_to_jsonl(tiny_openclip_export, tmp_path):
    out = tmp_path / "t.jsonl"
    text_file = tmp_path / "texts.txt"
    text_file.write_text("a red car\nzwei Hunde im Schnee\n")
    result = fastclip("embed", "--text", "a dog", "--text-file", text_file, "--model", tiny_openclip_export, "--out", out)
    assert result.returncode == 0, result.stderr
    head, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert head["fastclip_embeddings"]["kind"] == "text" and head["fastclip_embeddings"]["rows"] == 3
    assert [r["text"] for r in rows] == ["a dog", "a red car", "zwei Hunde im Schnee"]
    want = np.stack(list(TextEmbedding(tiny_openclip_export).embed([r["text"] for r in rows])))
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), want, atol=1e-6)


@pytest.mark.parametrize(
    "args",
    [
        ("embed", "x.jpg", "--out", "v.csv"),
        ("embed", "--out", "v.npy"),
        ("embed", "x.jpg", "--text", "a", "--out", "v.npy"),
        ("embed", "x.jpg", "--out", "v.npy", "--parallel", "-1"),
        ("export", "m", "o", "--precision", "fp64"),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(args, tmp_path):
    result = fastclip(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "extra, named",
    [(("--engine", "ray", "--parallel", "2"), "--parallel"), (("--ray-address", "auto"), "--ray-address"),
     (("--rows-per-part", "5"), "--rows-per-part")],
)
def test_options_the_engine_does_not_use_are_refused(photo_dir, tmp_path, extra, named):
    result = fastclip("embed", photo_dir, "--model", tmp_path / "no-such-model", "--out", tmp_path / "v.npy", *extra)
    assert result.returncode == 2 and named in result.stderr.splitlines()[-1], result.stderr
    assert "no such model" not in result.stderr  # refused before the model or Ray


def test_engine_ray_unusable_out_is_a_usage_error_before_ray(photo_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "_fastclip_job.json").write_text("{}")
    for out, says in ((tmp_path / "file", "is a file"), (tmp_path / "parts", "--resume")):
        result = fastclip("embed", photo_dir, "--engine", "ray", "--model", tmp_path / "no-such-model", "--out", out)
        assert result.returncode == 2 and says in result.stderr and "no such model" not in result.stderr, result.stderr


def test_missing_input_folder_is_a_usage_error_before_the_model(tmp_path):
    result = fastclip("embed", tmp_path / "no" / "such" / "folder", "--model", tmp_path / "no-such-model",
                      "--out", tmp_path / "v.npy")
    assert result.returncode == 2 and "no such file or folder" in result.stderr, result.stderr
    assert "no such model" not in result.stderr and not (tmp_path / "v.npy").exists()


def test_missing_model_is_one_line_exit_1(tmp_path, photo_dir):
    result = fastclip("embed", photo_dir, "--model", tmp_path / "no-such-model", "--out", tmp_path / "v.npy")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "no such model folder" in result.stderr


def test_info_shows_dims_and_verification(tiny_openclip_export):
    result = fastclip("info", tiny_openclip_export)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tiny_openclip_export / "fastclip.json").read_text())
    assert f"embed_dim: {manifest['embed_dim']}" in result.stdout
    assert "fp32" in result.stdout and "min cosine" in result.stdout


def test_parquet_without_pyarrow_is_a_one_line_hint(tiny_openclip_export, photo_dir, tmp_path):
    # sys.modules[name] = None makes `import pyarrow` fail as if it were not installed.
    code = (
        "import sys; sys.modules['pyarrow'] = None; from fastclip.cli import main; "
        f"sys.exit(main(['embed', {str(photo_dir)!r}, '--model', {str(tiny_openclip_export)!r}, '--out', {str(tmp_path / 'v.parquet')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install" in result.stderr and '[parquet]"' in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "v.parquet").exists()


# ------------------------------------------------------------------ streaming, resume, exact names, signals


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """240 small distinct images plus one corrupt file, so a run has 60 batches of 4 and a failure."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(240):
        pixels = rng.integers(0, 256, (24 + i % 7, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    (folder / "100_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder


def embed_many(model, folder, out, *, env=None):
    return fastclip("embed", folder, "--model", model, "--out", out, "--batch-size", 4, "--skip-errors", env=env)


@pytest.fixture(scope="module")
def reference_run(tiny_openclip_export, many_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "v.npy"
    result = embed_many(tiny_openclip_export, many_images, out)
    assert result.returncode == 1 and "240 images embedded, 1 failed" in result.stderr, result.stderr
    return out


def assert_same_output(out, reference):
    """Same rows, order and bits as the uninterrupted run; only the creation time may differ."""
    got, want = read_embeddings(out), read_embeddings(reference)
    assert got.items == want.items
    assert out.read_bytes() == reference.read_bytes()  # the whole .npy, header included
    assert {**got.meta, "created": None} == {**want.meta, "created": None}
    assert errors_path(out).read_text() == errors_path(reference).read_text()
    assert not partial_dir(out).exists()


def checkpoints(out) -> int:
    try:
        return (partial_dir(out) / "rows.jsonl").read_bytes().count(b'{"next"')
    except FileNotFoundError:
        return 0


def test_kill_mid_batch_twice_then_resume_is_identical(tiny_openclip_export, many_images, reference_run, tmp_path):
    out = tmp_path / "v.npy"
    # Killed after batch 9's vectors reached the file but before its journal lines did.
    first = embed_many(tiny_openclip_export, many_images, out, env={"FASTCLIP_FAULT": "vectors-9"})
    assert first.returncode == -9 and checkpoints(out) == 8 and not out.exists()
    # The resumed run starts at input 32 (8 batches of 4) and is itself killed after 5 more checkpoints.
    second = fastclip("embed", many_images, "--model", tiny_openclip_export, "--out", out, "--batch-size", 4,
                      "--skip-errors", "--resume", env={"FASTCLIP_FAULT": "checkpoint-5"})
    assert second.returncode == -9 and "32 of 241 inputs were done" in second.stderr and checkpoints(out) == 13
    third = fastclip("embed", many_images, "--model", tiny_openclip_export, "--out", out, "--batch-size", 4,
                     "--skip-errors", "--resume")
    assert third.returncode == 1 and "52 of 241 inputs were done" in third.stderr, third.stderr
    assert_same_output(out, reference_run)


@pytest.mark.parametrize("step", ["finish-written", "rename-0"])
def test_kill_while_finishing_then_resume_is_identical(tiny_openclip_export, many_images, reference_run, tmp_path, step):
    out = tmp_path / "v.npy"
    embed_many(tiny_openclip_export, many_images, out)  # a previous good output to protect
    before = out.read_bytes()
    killed = embed_many(tiny_openclip_export, many_images, tmp_path / "v.npy", env={"FASTCLIP_FAULT": step})
    assert killed.returncode == -9
    if step == "finish-written":
        assert out.read_bytes() == before
    resumed = fastclip("embed", many_images, "--model", tiny_openclip_export, "--out", out, "--batch-size", 4,
                       "--skip-errors", "--resume")
    assert resumed.returncode == 1, resumed.stderr
    assert_same_output(out, reference_run)


def start(model, folder, out, *extra, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastclip.cli", "embed", str(folder), "--model", str(model), "--out", str(out),
         "--batch-size", "4", "--skip-errors", *extra],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stderr=subprocess.PIPE, text=True,
    )


def wait_for_checkpoints(proc, out, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while checkpoints(out) < n:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_signal_mid_run_keeps_old_output_then_resume_is_identical(
    tiny_openclip_export, many_images, reference_run, tmp_path, sig
):
    out = tmp_path / "v.npy"
    out.write_bytes(b"previous output")
    # "slow": 0.1 s after each of the 60 checkpoints, so the run is still busy when the signal lands.
    proc = start(tiny_openclip_export, many_images, out, env={"FASTCLIP_FAULT": "slow"})
    wait_for_checkpoints(proc, out, 5)
    proc.send_signal(sig)
    sent = time.monotonic()
    proc.wait(timeout=20)
    stderr = proc.stderr.read()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and time.monotonic() - sent < 5, stderr
        assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    else:
        assert proc.returncode == -9
    assert out.read_bytes() == b"previous output" and checkpoints(out) >= 5
    resumed = fastclip("embed", many_images, "--model", tiny_openclip_export, "--out", out, "--batch-size", 4,
                       "--skip-errors", "--resume")
    assert resumed.returncode == 1 and "resuming" in resumed.stderr, resumed.stderr
    assert_same_output(out, reference_run)


def test_resume_refuses_other_options_and_inputs(tiny_openclip_export, many_images, tmp_path):
    out = tmp_path / "v.npy"
    killed = embed_many(tiny_openclip_export, many_images, out, env={"FASTCLIP_FAULT": "checkpoint-2"})
    assert killed.returncode == -9
    other_batch = fastclip("embed", many_images, "--model", tiny_openclip_export, "--out", out, "--batch-size", 8,
                           "--skip-errors", "--resume")
    assert other_batch.returncode == 2 and "cannot resume" in other_batch.stderr and "options" in other_batch.stderr
    other_inputs = fastclip("embed", many_images / "000.jpg", "--model", tiny_openclip_export, "--out", out,
                            "--batch-size", 4, "--resume")
    assert other_inputs.returncode == 2 and "inputs" in other_inputs.stderr
    assert "Traceback" not in other_batch.stderr + other_inputs.stderr


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory, photo_dir):
    """Photos whose names hold a non-UTF-8 byte and a newline, beside a plain one."""
    folder = tmp_path_factory.mktemp("odd")
    sources = sorted(photo_dir.rglob("*.jpg"))
    names = [b"caf\xe9.jpg", b"two\nlines.jpg", b"plain.jpg"]
    for name, src in zip(names, sources):
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(src.read_bytes())
    return folder, sorted(os.path.join(str(folder), os.fsdecode(n)) for n in names)


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".parquet"])
def test_exact_names_in_every_format(tiny_openclip_export, odd_names, tmp_path, suffix):
    folder, expected = odd_names
    out = tmp_path / f"v{suffix}"
    result = fastclip("embed", folder, "--model", tiny_openclip_export, "--out", out)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    got = read_embeddings(out)
    assert got.items == expected
    assert os.fsencode(got.items[0]).endswith(b"/caf\xe9.jpg") and "\n" in got.items[2]
    model = ImageEmbedding(tiny_openclip_export)
    np.testing.assert_allclose(got.vectors, np.stack(list(model.embed(expected))), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name] + ([out.name + ".jsonl"] if suffix == ".npy" else []))


def test_stdin_nul_separated_names(tiny_openclip_export, odd_names, tmp_path):
    folder, expected = odd_names
    out = tmp_path / "v.npy"
    listing = b"\0".join(os.fsencode(p) for p in expected) + b"\0"
    result = subprocess.run([sys.executable, "-m", "fastclip.cli", "embed", "-", "-0", "--model", str(tiny_openclip_export),
                             "--out", str(out)], input=listing, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert read_embeddings(out).items == expected


def test_fifo_and_device_are_failures_not_hangs(tiny_openclip_export, photo_dir, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    good = sorted(photo_dir.rglob("*.jpg"))[0]
    out = tmp_path / "v.npy"
    result = fastclip("embed", good, fifo, "/dev/zero", "--model", tiny_openclip_export, "--out", out, "--skip-errors",
                      timeout=60)
    assert result.returncode == 1, result.stderr
    assert "FIFO" in result.stderr and "device" in result.stderr and "Traceback" not in result.stderr
    assert read_embeddings(out).items == [str(good)]
    strict = fastclip("embed", fifo, "--model", tiny_openclip_export, "--out", tmp_path / "w.npy", timeout=60)
    assert strict.returncode == 1 and "pipe.jpg" in strict.stderr and "FIFO" in strict.stderr


@pytest.mark.parametrize("case", ["directory", "parent-is-file", "interrupted-run"])
def test_unusable_out_fails_before_embedding(photo_dir, tmp_path, case):
    if case == "directory":
        out = tmp_path / "v.npy"
        out.mkdir()
    elif case == "parent-is-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "v.npy"
    else:
        out = tmp_path / "v.npy"
        partial_dir(out).mkdir()
        (partial_dir(out) / "job.json").write_text("{}")
        (partial_dir(out) / "rows.jsonl").write_text('{"next": 32, "rows": 32}\n')
    # A model that does not exist: reaching the model at all would exit 1 with "no such model folder".
    result = fastclip("embed", photo_dir, "--model", tmp_path / "no-such-model", "--out", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "no such model" not in result.stderr
    assert {"directory": "is a directory", "parent-is-file": "cannot create the folder",
            "interrupted-run": "Pass --resume"}[case] in result.stderr


def test_unwritable_out_folder_exit_2(tiny_openclip_export, photo_dir, tmp_path):
    # /proc refuses new files even to root (CI runs as root: a 0o500 folder would not stop it).
    result = fastclip("embed", photo_dir, "--model", tiny_openclip_export, "--out", "/proc/v.npy")
    assert result.returncode == 2 and "cannot write in /proc" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if os.geteuid() != 0:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        result = fastclip("embed", photo_dir, "--model", tiny_openclip_export, "--out", locked / "v.npy")
        assert result.returncode == 2 and "cannot write" in result.stderr


def test_text_arguments_and_files_must_be_utf8(tiny_openclip_export, tmp_path):
    out = tmp_path / "t.npy"
    argv = fastclip("embed", "--text", "fine", "--text", b"caf\xe9", "--model", tiny_openclip_export, "--out", out)
    assert argv.returncode == 1 and "Traceback" not in argv.stderr
    assert "text #1" in argv.stderr and "0xe9" in argv.stderr
    bad = tmp_path / "texts.txt"
    bad.write_bytes(b"a dog\nun caf\xe9\n")
    from_file = fastclip("embed", "--text-file", bad, "--model", tiny_openclip_export, "--out", out)
    assert from_file.returncode == 1 and "Traceback" not in from_file.stderr
    assert "text #1" in from_file.stderr and "texts.txt line 2" in from_file.stderr and "0xe9" in from_file.stderr
    assert not out.exists() and not partial_dir(out).exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_texts_resume_after_kill_is_identical(tiny_openclip_export, tmp_path, suffix):
    from support.photos import SENTENCES

    # 2,500 texts in chunks of 1,200 (TEXT_CHUNK rounded up to batches of 300): the kill lands after chunk 1.
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(f"{SENTENCES[i % len(SENTENCES)]} #{i}" for i in range(2500)) + "\n")
    args = ("embed", "--text-file", text_file, "--model", tiny_openclip_export, "--batch-size", 300)
    reference = tmp_path / f"ref{suffix}"
    assert fastclip(*args, "--out", reference).returncode == 0
    out = tmp_path / f"t{suffix}"
    assert fastclip(*args, "--out", out, env={"FASTCLIP_FAULT": "checkpoint-1"}).returncode == -9
    resumed = fastclip(*args, "--out", out, "--resume")
    assert resumed.returncode == 0 and "1200 of 2500 inputs were done" in resumed.stderr, resumed.stderr
    got, want = read_embeddings(out), read_embeddings(reference)
    assert got.items == want.items and len(got.items) == 2500
    assert np.array_equal(got.vectors, want.vectors)  # bit for bit
    if suffix == ".jsonl":
        assert out.read_text().splitlines()[1:] == reference.read_text().splitlines()[1:]
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(out).equals(pq.read_table(reference))  # same columns and values
        meta = {k: v for k, v in got.meta.items() if k != "created"}
        assert meta == {k: v for k, v in want.meta.items() if k != "created"}


def test_parallel_matches_serial_and_resumes_bit_identical(tiny_openclip_export, many_images, reference_run, tmp_path):
    args = ("embed", many_images, "--model", tiny_openclip_export, "--batch-size", 4, "--skip-errors", "--parallel", 2)
    whole = tmp_path / "whole.npy"
    assert fastclip(*args, "--out", whole).returncode == 1
    got, serial = read_embeddings(whole), read_embeddings(reference_run)
    assert got.items == serial.items and got.meta["options"]["parallel"] == 2
    assert np.abs(got.vectors - serial.vectors).max() <= 1e-6
    out = tmp_path / "v.npy"
    assert fastclip(*args, "--out", out, env={"FASTCLIP_FAULT": "checkpoint-10"}).returncode == -9
    refused = fastclip(*args[:-2], "--out", out, "--resume")  # the same run without --parallel
    assert refused.returncode == 2 and "options" in refused.stderr
    resumed = fastclip(*args, "--out", out, "--resume")
    assert resumed.returncode == 1 and "40 of 241 inputs were done" in resumed.stderr, resumed.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert read_embeddings(out).items == got.items


def test_parallel_ctrl_c_leaves_no_worker(tiny_openclip_export, many_images, tmp_path):
    import psutil
    out = tmp_path / "v.npy"
    proc = start(tiny_openclip_export, many_images, out, "--parallel", "2", env={"FASTCLIP_FAULT": "slow"})
    wait_for_checkpoints(proc, out, 3)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    proc.wait(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - sent < 10, proc.stderr.read()
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive


def test_parallel_texts_match_serial(tiny_openclip_export, tmp_path):
    from support.photos import SENTENCES

    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(600)) + "\n")
    args = ("embed", "--text-file", text_file, "--model", tiny_openclip_export, "--batch-size", 64)
    assert fastclip(*args, "--out", tmp_path / "s.npy").returncode == 0
    assert fastclip(*args, "--out", tmp_path / "p.npy", "--parallel", 2).returncode == 0
    serial, parallel = read_embeddings(tmp_path / "s.npy"), read_embeddings(tmp_path / "p.npy")
    assert parallel.items == serial.items and len(serial.items) == 600
    assert np.abs(parallel.vectors - serial.vectors).max() <= 1e-6


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_anywhere_on_the_line(tiny_openclip_export, tmp_path, where):
    """-q before or after the subcommand: the same run, and its info lines go, the summary with them
    (-q is "only warnings and errors"; the output file is the result)."""
    args = ["embed", "--text", "a dog", "--model", tiny_openclip_export, "--out", tmp_path / "t.npy"]
    loud = fastclip(*args)
    assert loud.returncode == 0, loud.stderr
    assert "text tower on CPU" in loud.stderr and "fastclip: 1 texts embedded" in loud.stderr
    args[-1] = tmp_path / "q.npy"
    quiet = fastclip(*(["-q", *args] if where == "before" else [*args, "-q"]))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    np.testing.assert_array_equal(read_embeddings(tmp_path / "q.npy").vectors, read_embeddings(tmp_path / "t.npy").vectors)


def test_quiet_resume_keeps_warnings_and_errors_only(tiny_openclip_export, album_with_corrupt, tmp_path):
    out = tmp_path / "v.npy"
    args = ("embed", album_with_corrupt, "--model", tiny_openclip_export, "--out", out, "--batch-size", 1, "-q")
    assert fastclip(*args).returncode == 1  # stops at the corrupt image, 2 inputs kept
    resumed = fastclip(*args, "--resume", "--skip-errors")
    assert resumed.returncode == 1 and len(read_embeddings(out).items) == 5
    lines = resumed.stderr.splitlines()
    assert len(lines) == 2 and "resuming" not in resumed.stderr and "embedded" not in resumed.stderr, lines
    assert lines[0].startswith("fastclip: skipped #2 ") and lines[1].startswith("fastclip: failed: "), lines


def test_quiet_after_a_nested_subcommand_is_accepted():
    result = fastclip("eval", "retrieval", "--help", "-q")
    assert result.returncode == 0, result.stderr
    assert "-q, --quiet" in result.stdout


# ------------------------------------------------------------------ CLI edges


def run_into_closed_pipe(*args) -> subprocess.CompletedProcess:
    """The command with its stdout a pipe whose reader is gone, as `fastclip ... | head -1` leaves it once head
    has its line (here for certain: the read end is closed before the command starts)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "fastclip.cli", *map(str, args)], stdout=write,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    finally:
        os.close(write)


def test_reader_gone_exits_141_without_a_word(tiny_openclip_export):
    result = run_into_closed_pipe("info", tiny_openclip_export)
    assert result.returncode == 141 and result.stderr == "", result.stderr


def test_failure_before_the_first_checkpoint_leaves_nothing(tiny_openclip_export, photo_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "000_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 300)
    (folder / "001.jpg").write_bytes(sorted(photo_dir.rglob("*.jpg"))[0].read_bytes())
    out = tmp_path / "v.npy"
    result = fastclip("embed", folder, "--model", tiny_openclip_export, "--out", out)
    assert result.returncode == 1 and "000_corrupt.jpg" in result.stderr and "--resume" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no v.npy, no .v.npy.partial/


@pytest.mark.parametrize("extra, named", [
    (("--text", "a dog", "--fast"), "--fast"), (("--text", "a dog", "--fast-max"), "--fast-max"),
    (("--text-file", "t.txt", "--no-exif"), "--no-exif"), (("PHOTOS", "--language", "fra_Latn"), "--language"),
])
def test_options_the_inputs_do_not_use_are_refused(photo_dir, tmp_path, extra, named):
    (tmp_path / "t.txt").write_text("a dog\n")
    extra = [photo_dir if e == "PHOTOS" else e for e in extra]
    result = fastclip("embed", *extra, "--model", tmp_path / "no-such-model", "--out", tmp_path / "v.npy", cwd=tmp_path)
    assert result.returncode == 2 and "no such model" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"fastclip embed: error: {named} applies to ") and "only" in last, last


@pytest.mark.parametrize("args, usage", [
    (("embed", "x.jpg", "--text", "a", "--out", "v.npy"), "usage: fastclip embed "),
    (("export", "open_clip:ViT-B-32", "out", "--precision", "fp64"), "usage: fastclip export "),
    (("eval", "retrieval", "captions.csv", "--ks", "0"), "usage: fastclip eval retrieval "),
])
def test_usage_error_prints_the_subcommands_usage(tmp_path, args, usage):
    result = fastclip(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(usage), result.stderr
    assert result.stderr.splitlines()[-1].startswith(usage[len("usage: "):].rstrip() + ": error: ")


def test_missing_precision_names_the_export_that_adds_it(tiny_openclip_export, tmp_path):
    result = fastclip("embed", "--text", "a dog", "--model", tiny_openclip_export, "--out", tmp_path / "t.npy",
                      "--precision", "int8")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # the tiny export's manifest records source open_clip fastclip-tiny, pretrained none
    assert (f"precision 'int8' not in this model folder (available: fp32); add it by exporting again: fastclip "
            f"export open_clip:fastclip-tiny {tiny_openclip_export} --pretrained none --precision fp32,int8 "
            f"--overwrite") in result.stderr, result.stderr
    assert not (tmp_path / "t.npy").exists()

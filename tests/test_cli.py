"""The `fastclip` command, end to end in subprocesses, on a tiny exported model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastclip import ImageEmbedding, TextEmbedding
from photos import write_photos


def fastclip(*args, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fastclip.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
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
    matrix = np.load(out)
    paths = Path(str(out) + ".paths.txt").read_text().splitlines()
    assert matrix.shape == (5, ImageEmbedding(tiny_openclip_export).dim) and len(paths) == 5
    assert paths == sorted(paths) and not any(p.endswith(".txt") for p in paths)
    model = ImageEmbedding(tiny_openclip_export)
    for row, path in zip(matrix, paths):
        np.testing.assert_allclose(row, next(model.embed([path])), atol=1e-6)
    assert "5 images embedded, 0 failed" in result.stderr


def test_corrupt_file_without_skip_errors_fails_and_writes_nothing(tiny_openclip_export, album_with_corrupt, tmp_path):
    out = tmp_path / "vectors.npy"
    result = fastclip("embed", album_with_corrupt, "--model", tiny_openclip_export, "--out", out)
    assert result.returncode == 1
    assert "01_zz_corrupt.jpg" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_corrupt_file_with_skip_errors_is_left_out(tiny_openclip_export, album_with_corrupt, photo_dir, tmp_path):
    out = tmp_path / "vectors.npy"
    result = fastclip("embed", album_with_corrupt, "--model", tiny_openclip_export, "--out", out, "--skip-errors")
    assert result.returncode == 1  # something failed, even though the rest was written
    paths = Path(str(out) + ".paths.txt").read_text().splitlines()
    matrix = np.load(out)
    assert len(paths) == matrix.shape[0] == 5
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
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a dog", "a red car", "zwei Hunde im Schnee"]
    want = np.stack(list(TextEmbedding(tiny_openclip_export).embed([r["text"] for r in rows])))
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), want, atol=1e-6)


@pytest.mark.parametrize(
    "args",
    [
        ("embed", "x.jpg", "--out", "v.csv"),
        ("embed", "--out", "v.npy"),
        ("embed", "x.jpg", "--text", "a", "--out", "v.npy"),
        ("export", "m", "o", "--precision", "fp64"),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(args, tmp_path):
    result = fastclip(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


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
    assert "pip install 'fastclip[parquet]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "v.parquet").exists()

"""Embeddings files: every format round-trips exact names and bit-identical vectors; interrupted writes
never replace a good file and are detected or resumed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from fastclip.errors import OutputError
from fastclip.hashing import tower_fingerprint
from fastclip.manifest import TowerFile, load
from fastclip.sinks import (
    EmbeddingsWriter,
    check_output,
    errors_path,
    exact_bytes,
    interrupted_run,
    make_header,
    partial_dir,
    read_embeddings,
)

FORMATS = (".npy", ".jsonl", ".parquet")
# A newline, a non-UTF-8 byte (0xe9 as surrogateescape gives it), a valid accent, a quote and a backslash.
NAMES = ["a.jpg", "caf\udce9.jpg", "two\nlines.jpg", "\u00e9t\u00e9.png", 'q"uote\\.jpg', "tab\there.jpg"]
DIM = 8


def header(kind="image", **options):
    return make_header(kind=kind, dim=DIM, model="tiny", fingerprint="ab" * 32, precision="fp32",
                       options={"batch_size": 2, **options})


def vectors(n, seed=0):
    # Values with full float32 mantissas (not round decimals) so any lossy text round trip would show.
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def write(out, items, vecs, *, kind="image", failures=(), job=None, batch=2):
    with EmbeddingsWriter(out, header(kind), job=job or {"inputs": len(items)}) as w:
        for i in range(0, len(items), batch):
            w.write(items[i : i + batch], vecs[i : i + batch])
        if failures:
            w.write([], np.zeros((0, DIM), np.float32), failures=failures)
        return w.finish()


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_exact_names_and_bits(tmp_path, suffix):
    out = tmp_path / f"v{suffix}"
    vecs = vectors(len(NAMES))
    meta = write(out, NAMES, vecs, failures=[(len(NAMES), "gone\udcff.jpg", "file not found")])
    got = read_embeddings(out)
    assert got.items == NAMES
    assert [exact_bytes(i) for i in got.items][1] == b"caf\xe9.jpg"
    assert got.vectors.dtype == np.float32 and np.array_equal(got.vectors, vecs)
    assert got.kind == "image" and got.meta["rows"] == len(NAMES) and got.meta["failed"] == 1
    assert got.meta["fingerprint"] == "ab" * 32 and got.meta["options"] == {"batch_size": 2}
    assert meta["rows"] == len(NAMES)
    errors = [json.loads(line) for line in errors_path(out).read_text().splitlines()]
    assert errors == [{"index": len(NAMES), "path": "gone\udcff.jpg", "error": "file not found"}]
    assert not partial_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, errors_path(out).name] + ([out.name + ".jsonl"] if suffix == ".npy" else []))


def test_npy_side_file_is_one_ascii_line_per_row(tmp_path):
    out = tmp_path / "v.npy"
    write(out, NAMES, vectors(len(NAMES)))
    raw = (tmp_path / "v.npy.jsonl").read_bytes()
    raw.decode("ascii")  # ensure_ascii: no raw non-UTF-8 or newline bytes inside a row
    lines = raw.splitlines()
    assert len(lines) == 1 + len(NAMES)
    assert json.loads(lines[2]) == {"path": "caf\udce9.jpg"} and b"\\udce9" in lines[2]
    assert np.load(out).shape == (len(NAMES), DIM)
    assert json.loads(lines[0])["npy_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert read_embeddings(tmp_path / "v.npy.jsonl").items == NAMES  # the side file leads to its .npy


def test_parquet_bytes_column_only_when_needed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write(tmp_path / "utf8.parquet", ["a.jpg", "\u00e9.jpg"], vectors(2))
    assert pq.read_table(tmp_path / "utf8.parquet").column_names == ["path", "vector"]
    write(tmp_path / "raw.parquet", ["a.jpg", "caf\udce9.jpg"], vectors(2))
    table = pq.read_table(tmp_path / "raw.parquet")
    assert table.column("path").to_pylist() == ["a.jpg", "caf\ufffd.jpg"]
    assert table.column("path_bytes").to_pylist() == [None, b"caf\xe9.jpg"]
    kind = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == DIM and kind.value_type == pa.float32()


def test_texts_kind(tmp_path):
    texts = ["a dog", "", "multi\nline \u00fc", "emoji \U0001f436"]
    write(tmp_path / "t.jsonl", texts, vectors(4), kind="text")
    got = read_embeddings(tmp_path / "t.jsonl")
    assert got.kind == "text" and got.items == texts


def test_empty_run(tmp_path):
    write(tmp_path / "e.npy", [], np.zeros((0, DIM), np.float32))
    got = read_embeddings(tmp_path / "e.npy")
    assert got.vectors.shape == (0, DIM) and got.items == []


def test_mismatched_pair_is_detected(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write(a / "v.npy", NAMES, vectors(len(NAMES), seed=1))
    write(b / "v.npy", NAMES, vectors(len(NAMES), seed=2))  # same rows, other vectors
    os.replace(b / "v.npy", a / "v.npy")  # new .npy beside the old side file
    with pytest.raises(OutputError, match="do not belong together.*sha256"):
        read_embeddings(a / "v.npy")
    assert read_embeddings(a / "v.npy", verify=False).vectors.shape == (len(NAMES), DIM)
    write(b / "v.npy", NAMES[:3], vectors(3))
    os.replace(b / "v.npy", a / "v.npy")  # other row count
    with pytest.raises(OutputError, match=r"shape \(3, 8\).*6 rows"):
        read_embeddings(a / "v.npy", verify=False)


def test_reader_refuses_foreign_and_truncated_files(tmp_path):
    np.save(tmp_path / "plain.npy", vectors(2))
    with pytest.raises(OutputError, match="no side file"):
        read_embeddings(tmp_path / "plain.npy")
    (tmp_path / "x.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(OutputError, match="not a fastclip embeddings file"):
        read_embeddings(tmp_path / "x.jsonl")
    write(tmp_path / "t.jsonl", NAMES, vectors(len(NAMES)))
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    (tmp_path / "t.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(OutputError, match="truncated"):
        read_embeddings(tmp_path / "t.jsonl")
    with pytest.raises(OutputError, match="cannot read"):
        read_embeddings(tmp_path / "missing.parquet")


def test_interrupted_run_keeps_old_output_and_resumes_to_identical_file(tmp_path):
    out = tmp_path / "v.npy"
    write(out, ["old.jpg"], vectors(1, seed=9))
    old = out.read_bytes(), (tmp_path / "v.npy.jsonl").read_bytes()
    items, vecs = [f"{i}.jpg" for i in range(10)], vectors(10)
    job = {"inputs": 10}
    w = EmbeddingsWriter(out, header(), job=job)
    for i in range(0, 6, 2):
        w.write(items[i : i + 2], vecs[i : i + 2])
    w.close()  # as after Ctrl-C: the work folder stays
    assert (out.read_bytes(), (tmp_path / "v.npy.jsonl").read_bytes()) == old
    # A kill in the middle of the next batch: half its vectors, half a journal line.
    with open(partial_dir(out) / "vectors.npy", "ab") as f:
        f.write(vecs[6].tobytes() + b"\x00" * 5)
    with open(partial_dir(out) / "rows.jsonl", "ab") as f:
        f.write(b'{"path": "6.jpg"}\n{"path": "7.j')
    with pytest.raises(OutputError, match="interrupted.*--resume"):
        EmbeddingsWriter(out, header(), job=job)
    with EmbeddingsWriter(out, header(), job=job, resume=True) as w:
        assert (w.done, w.rows, w.failed) == (6, 6, 0)
        for i in range(w.done, 10, 2):
            w.write(items[i : i + 2], vecs[i : i + 2])
        w.finish()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write(fresh / "v.npy", items, vecs)
    assert out.read_bytes() == (fresh / "v.npy").read_bytes()
    side = [json.loads(line) for line in (tmp_path / "v.npy.jsonl").read_text().splitlines()]
    fresh_side = [json.loads(line) for line in (fresh / "v.npy.jsonl").read_text().splitlines()]
    assert side[1:] == fresh_side[1:] and side[0]["npy_sha256"] == fresh_side[0]["npy_sha256"]


def test_vectors_behind_the_journal_roll_back_to_their_checkpoint(tmp_path):
    out = tmp_path / "v.jsonl"
    vecs = vectors(6)
    w = EmbeddingsWriter(out, header(), job={})
    w.write(["0", "1"], vecs[:2], failures=[(2, "2", "bad")], next_index=3)
    w.write(["3", "4"], vecs[3:5], next_index=5)
    w.close()
    with open(partial_dir(out) / "vectors.npy", "r+b") as f:  # the last batch's vectors never landed
        f.truncate(128 + 3 * 4 * DIM)
    with EmbeddingsWriter(out, header(), job={}, resume=True) as w:
        assert (w.done, w.rows, w.failed) == (3, 2, 1)
        w.write(["3", "4"], vecs[3:5], next_index=5)
        w.finish()
    got = read_embeddings(out)
    assert got.items == ["0", "1", "3", "4"] and np.array_equal(got.vectors, vecs[[0, 1, 3, 4]])
    assert got.meta["failed"] == 1


@pytest.mark.parametrize(
    "change, what",
    [({"job": {"inputs": 99}}, "inputs"), ({"fingerprint": "cd" * 32}, "fingerprint"),
     ({"options": {"batch_size": 4}}, "options"), ({"precision": "int8"}, "precision")],
)
def test_resume_refuses_other_inputs_model_or_options(tmp_path, change, what):
    out = tmp_path / "v.npy"
    w = EmbeddingsWriter(out, header(), job={"inputs": 4})
    w.write(["a", "b"], vectors(2))
    w.close()
    job = change.pop("job", {"inputs": 4})
    with pytest.raises(OutputError, match=f"cannot resume.*{what}"):
        EmbeddingsWriter(out, {**header(), **change}, job=job, resume=True)
    with EmbeddingsWriter(out, header(), job={"inputs": 4}, resume=True) as w:
        assert w.done == 2  # the refusal left the work folder as it was


def test_second_writer_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "v.npy"
    with EmbeddingsWriter(out, header(), job={}):
        with pytest.raises(OutputError, match="another fastclip run"):
            EmbeddingsWriter(out, header(), job={}, resume=True)


# Steps of finish() where a kill is injected (see sinks._fault): after the final .npy is hashed, after all
# final files are written, and between the two renames of the .npy pair.
KILL_SCRIPT = """
import sys, numpy as np
from fastclip.sinks import EmbeddingsWriter, make_header
out, resume = sys.argv[1], sys.argv[2] == "resume"
h = make_header(kind="image", dim=8, model="tiny", fingerprint="ab" * 32, precision="fp32")
vecs = np.arange(40, dtype=np.float32).reshape(5, 8) / 7
with EmbeddingsWriter(out, h, job={"n": 5}, resume=resume) as w:
    for i in range(w.done, 5):
        w.write([f"{i}\\n.jpg"], vecs[i : i + 1])
    w.finish()
"""


@pytest.mark.parametrize("step", ["finish-npy", "finish-written", "rename-0"])
def test_kill_during_finish_then_resume(tmp_path, step):
    out = tmp_path / "v.npy"
    write(out, ["old.jpg"], vectors(1))
    env = {**os.environ, "FASTCLIP_FAULT": step}
    run = [sys.executable, "-c", KILL_SCRIPT, str(out)]
    killed = subprocess.run([*run, "fresh"], env=env, capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    if step == "rename-0":  # the new side file is in place, the old .npy still beside it
        with pytest.raises(OutputError, match="do not belong together"):
            read_embeddings(out)
    else:
        assert read_embeddings(out).items == ["old.jpg"]
    env.pop("FASTCLIP_FAULT")
    done = subprocess.run([*run, "resume"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = read_embeddings(out)
    assert got.items == [f"{i}\n.jpg" for i in range(5)]
    assert np.array_equal(got.vectors, np.arange(40, dtype=np.float32).reshape(5, 8) / 7)
    assert not partial_dir(out).exists()


def test_check_output_fails_early(tmp_path):
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path / "dir.npy")
    with pytest.raises(OutputError, match="must end in"):
        check_output(tmp_path / "v.csv")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the folder"):
        check_output(tmp_path / "file" / "sub" / "v.npy")
    assert check_output(tmp_path / "new" / "deeper" / "v.npy").parent.is_dir()
    with pytest.raises(OutputError, match="cannot write in /proc"):  # refused to root too (CI runs as root)
        check_output("/proc/v.npy")
    if os.geteuid() != 0:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="cannot write in"):
            check_output(locked / "v.npy")
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # the probe file is gone


def test_tower_fingerprint(tiny_openclip_export, tmp_path):
    manifest = load(tiny_openclip_export)
    spec = manifest.vision
    fp32 = tiny_openclip_export / spec.files["fp32"].path
    want = hashlib.sha256(fp32.read_bytes()).hexdigest()
    assert tower_fingerprint(tiny_openclip_export, spec) == want
    unrecorded = replace(spec, files={"fp32": replace(spec.files["fp32"], sha256=None)})
    assert tower_fingerprint(tiny_openclip_export, unrecorded) == want
    assert tower_fingerprint(tiny_openclip_export, manifest.text) != want
    external = replace(spec, files={"fp32": TowerFile(path=spec.files["fp32"].path, sha256=want,
                                                      external_data=("w.bin",), external_data_sha256={"w.bin": "00"})})
    assert tower_fingerprint(tiny_openclip_export, external) == hashlib.sha256(f"{want}\nw.bin 00".encode()).hexdigest()


def test_work_folder_without_work_starts_over(tmp_path):
    out = tmp_path / "v.npy"
    partial_dir(out).mkdir()  # a run killed right after creating its folder: no job.json, no rows
    (partial_dir(out) / "vectors.npy").write_bytes(b"junk")
    assert interrupted_run(out) is None
    write(out, ["a.jpg"], vectors(1))
    assert read_embeddings(out).items == ["a.jpg"]
    # A run that stopped before its first checkpoint (e.g. its worker processes failed to start) holds
    # nothing either: a run with other inputs and options starts over without --resume.
    EmbeddingsWriter(out, header(), job={"inputs": 1}).close()
    assert interrupted_run(out) is None
    with EmbeddingsWriter(out, header(batch_size=8), job={"inputs": 2}) as w:
        w.write(["b.jpg", "c.jpg"], vectors(2))
        assert interrupted_run(out) == partial_dir(out)
        w.finish()
    assert read_embeddings(out).items == ["b.jpg", "c.jpg"]


# ----------------------------------------------------------------------------- Ray parts (no Ray needed)

def test_parts_in_any_order_read_back_in_input_order_and_resume(tmp_path):
    from fastclip.sinks import PartsWriter

    out, vecs = tmp_path / "parts", vectors(len(NAMES))
    job = {"inputs": len(NAMES) + 1}
    with PartsWriter(out, header(), job=job) as w:
        w.write([NAMES[4], NAMES[1]], vecs[[4, 1]], [4, 1])  # completion order, not input order
        w.write([NAMES[0]], vecs[[0]], [0], failures=[(6, "gone\udcff.jpg", "file not found")])
    with pytest.raises(OutputError, match="holds 4 of the run's 7 inputs.*--resume"):
        read_embeddings(out)
    with pytest.raises(OutputError, match="earlier run.*--resume"):
        PartsWriter(out, header(), job=job)
    with pytest.raises(OutputError, match="cannot resume.*fingerprint"):
        PartsWriter(out, {**header(), "fingerprint": "cd" * 32}, job=job, resume=True)
    with PartsWriter(out, header(), job=job, resume=True) as w:
        assert w.done == {0, 1, 4, 6} and (w.rows, w.failed, w.parts) == (3, 1, 2)
        w.write([NAMES[5], NAMES[2], NAMES[3]], vecs[[5, 2, 3]], [5, 2, 3])
    got = read_embeddings(out)
    assert got.items == NAMES and np.array_equal(got.vectors, vecs)
    assert (got.meta["rows"], got.meta["failed"], got.meta["fingerprint"]) == (6, 1, "ab" * 32)
    import pyarrow.parquet as pq

    first = pq.read_table(out / "part-00000.parquet")
    assert first.column_names == ["index", "path", "vector", "path_bytes"] and first.column("index").to_pylist() == [1, 4]
    assert json.loads((out / "_part-00001.errors.jsonl").read_text()) == {"index": 6, "path": "gone\udcff.jpg",
                                                                         "error": "file not found"}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no work folder left


def _parts_run(out, names, vecs):
    """A finished run of 3 parts in completion order, the last input failed; returns (header, job)."""
    from fastclip.sinks import PartsWriter

    job = {"inputs": len(names)}
    with PartsWriter(out, header(), job=job) as w:
        w.write(names[2:4], vecs[2:4], [2, 3])
        # While a run writes, the folder holds only parts and names that start with "_" or ".".
        assert all(p.name.startswith(("_", ".", "part-")) for p in out.iterdir())
        w.write(names[:2], vecs[:2], [0, 1])
        w.write([], vecs[:0], [], failures=[(len(names) - 1, names[-1], "file not found")])
    return header(), job


def test_parts_folder_is_a_parquet_dataset(tmp_path):
    """What Ray's output folder is for: any Parquet reader takes the folder as one dataset. Service files
    (job, lock, errors) start with "_", which pyarrow, pandas, Ray and Spark skip; rows come in part order
    with their input index."""
    import pandas as pd
    import pyarrow.parquet as pq

    out, names, vecs = tmp_path / "parts", ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"], vectors(5)
    _parts_run(out, names, vecs)
    table = pq.read_table(out)
    assert table.column_names == ["index", "path", "vector"]
    assert table.column("index").to_pylist() == [2, 3, 0, 1] and table.column("path").to_pylist() == names[2:4] + names[:2]
    got = np.array(table.column("vector").to_pylist(), np.float32)
    assert np.array_equal(got, vecs[[2, 3, 0, 1]])
    frame = pd.read_parquet(out).sort_values("index")
    assert frame["path"].tolist() == names[:4] and np.array_equal(np.stack(frame["vector"].to_numpy()), vecs[:4])
    assert read_embeddings(out).items == names[:4]


def test_lock_left_by_an_earlier_version_is_taken_over_on_resume(tmp_path):
    """Folders written before the lock was renamed hold DIR/lock, on which Parquet readers fail. A resume
    takes that lock (refused while a run of that version still holds it) and removes it."""
    import fcntl

    import pyarrow.parquet as pq

    from fastclip.sinks import PartsWriter

    out, names, vecs = tmp_path / "parts", ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"], vectors(5)
    head, job = _parts_run(out, names, vecs)
    (out / "lock").touch()
    with pytest.raises(Exception, match="lock"):
        pq.read_table(out)  # "Could not read schema from .../lock": what the rename is for
    with open(out / "lock", "a+") as held:  # an older fastclip still writing the folder
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError, match="another fastclip run is writing"):
            PartsWriter(out, head, job=job, resume=True)
    with PartsWriter(out, head, job=job, resume=True) as w:
        assert w.done == {0, 1, 2, 3, 4}
    assert not (out / "lock").exists() and pq.read_table(out).num_rows == 4
    assert read_embeddings(out).items == names[:4]


def test_sinks_modules_keep_to_their_rooms():
    """No sinks module imports another's private names; a format codec (npy, jsonl, parquet) imports no other
    codec and no writer, a writer (journal, parts) not the other writer (a writer may use the codec whose
    layout it writes): what they share lives in files.py, header.py and formats.py."""
    import ast
    from pathlib import Path

    import fastclip.sinks

    folder = Path(fastclip.sinks.__file__).parent
    codecs, writers = {"npy", "jsonl", "parquet"}, {"journal", "parts"}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from .{node.module}"
                if path.stem in codecs:
                    assert node.module not in codecs | writers, f"{path.name} imports .{node.module}"
                if path.stem in writers:
                    assert node.module not in writers, f"{path.name} imports .{node.module}"


PART_KILL = """
import sys, numpy as np
from fastclip.sinks import PartsWriter, make_header
h = make_header(kind="text", dim=8, model="tiny", fingerprint="ab" * 32, precision="fp32")
with PartsWriter(sys.argv[1], h, job={"inputs": 3}, resume=True) as w:
    w.write(["a"], np.ones((1, 8), np.float32), [0])
    w.write(["b"], np.ones((1, 8), np.float32), [1], failures=[(2, "c", "bad")])
"""


@pytest.mark.parametrize("step", ["rename-0", "part-1"])
def test_kill_while_placing_a_part_leaves_whole_parts(tmp_path, step):
    """A kill between a part's errors file and its Parquet file leaves an orphan errors file that a resume
    drops (that part is redone); a kill after the part landed keeps it."""
    out = tmp_path / "parts"
    run = [sys.executable, "-c", PART_KILL, str(out)]
    killed = subprocess.run(run, env={**os.environ, "FASTCLIP_FAULT": step}, capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    from fastclip.sinks import PartsWriter

    with PartsWriter(out, make_header(kind="text", dim=8, model="tiny", fingerprint="ab" * 32, precision="fp32"),
                     job={"inputs": 3}, resume=True) as w:
        assert w.done == ({0} if step == "rename-0" else {0, 1, 2})
    assert (out / "_part-00001.errors.jsonl").exists() == (step == "part-1")


def test_a_format_is_one_entry_in_the_table(tmp_path, monkeypatch):
    """A new suffix needs only a codec in FORMATS: the writer, journal, renames, errors file and reader
    take it from there (here a throwaway text format, one row per line)."""
    import types

    from fastclip.sinks import FORMATS
    from fastclip.sinks.formats import Format

    def encode(rows, head, work, out):
        lines = [json.dumps(head)] + [f"{item}\t{v.tolist()}" for items, vecs, _ in rows.chunks(2)
                                      for item, v in zip(items, vecs)]
        (work / "final.tsv").write_text("\n".join(lines) + "\n")
        return [("final.tsv", out.name)], head

    def decode(path, *, mmap=True, verify=True):
        from fastclip.sinks import EmbeddingsFile

        head, *rows = path.read_text().splitlines()
        items = [r.split("\t")[0] for r in rows]
        vecs = np.array([json.loads(r.split("\t")[1]) for r in rows], np.float32)
        return EmbeddingsFile(vectors=vecs, items=items, meta=json.loads(head))

    monkeypatch.setitem(FORMATS, ".tsv", Format(types.SimpleNamespace(encode=encode, decode=decode)))
    out = check_output(tmp_path / "v.tsv")
    vecs = vectors(3)
    write(out, ["a", "b", "c"], vecs, failures=[(3, "d", "bad")])
    got = read_embeddings(out)
    assert got.items == ["a", "b", "c"] and np.array_equal(got.vectors, vecs) and got.meta["failed"] == 1
    assert errors_path(out).exists() and not partial_dir(out).exists()

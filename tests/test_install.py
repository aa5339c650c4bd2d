"""The CPU-only install the README gives (after `<!-- cpu-install -->`), in a fresh virtual environment.

The commands are read from README.md, so the test runs what a reader copies. pip uses whatever index
this machine is configured with (pip.conf / PIP_* variables: here a local mirror beside PyPI); nothing
else is fetched. ~40 s here, most of it pip.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastclip import ImageEmbedding, TextEmbedding
from support.photos import SENTENCES, photo_array

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- cpu-install -->"
# The target, in du -sh's units (MiB, printed "M"), like its figures: fastembed's CPU install alone
# makes a 252 M venv; fastclip's GPU install 515 M.
MAX_VENV_MB = 260


def cpu_install_commands() -> list[str]:
    """The command lines of the fenced block right after the marker line (comments and blank lines dropped)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    at = [i for i, line in enumerate(lines) if line.strip() == MARKER]
    assert len(at) == 1, f"README.md needs exactly one line holding {MARKER}"
    fence = lines[at[0] + 1]
    assert fence.startswith("```"), f"the line after {MARKER} must open a fenced block, not {fence!r}"
    commands = []
    for line in lines[at[0] + 2:]:
        if line.startswith("```"):
            return commands
        command = line.split(" #")[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    raise AssertionError(f"the block after {MARKER} is never closed")


def du_mb(folder: Path) -> float:
    """Disk use as `du -sh` counts it (blocks, hard links once), in its units (MiB)."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(folder)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 2**20


def test_readme_cpu_install_block_is_pip_from_this_checkout():
    commands = cpu_install_commands()
    assert commands and all(shlex.split(c)[0] in ("pip", "python", "python3") for c in commands), commands
    assert not any("onnxruntime-gpu" in c for c in commands)


@pytest.mark.slow
def test_cpu_install_in_a_fresh_venv_embeds_without_onnxruntime_gpu(tiny_openclip_export, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The fresh venv alone: no PYTHONPATH (it would put this checkout's fastclip first), its bin first.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1")
    for command in cpu_install_commands():
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    python = str(venv / "bin" / "python")
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], env=env, capture_output=True,
                            text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names, sorted(names)
    assert not {"torch", "nvidia-cublas-cu12", "nvidia-cublas"} & names, sorted(names)
    size = du_mb(venv)
    assert size <= MAX_VENV_MB, f"fresh CPU venv is {size:.0f} MiB (target {MAX_VENV_MB})"

    # The installed command, run from elsewhere, gives this checkout's vectors.
    image = tmp_path / "coffee.png"
    from PIL import Image

    Image.fromarray(photo_array("coffee")).save(image)
    code = (
        "import sys, json, numpy as np, onnxruntime, fastclip\n"
        "from fastclip import ImageEmbedding, TextEmbedding\n"
        "assert 'site-packages' in fastclip.__file__, fastclip.__file__\n"
        f"i = next(ImageEmbedding({str(tiny_openclip_export)!r}).embed([{str(image)!r}]))\n"
        f"t = np.stack(list(TextEmbedding({str(tiny_openclip_export)!r}).embed({SENTENCES[:3]!r})))\n"
        f"np.save({str(tmp_path / 'i.npy')!r}, i); np.save({str(tmp_path / 't.npy')!r}, t)\n"
        # fastclip.retrieval's prebuilt graphs are package data: the search runs only if they were installed.
        "from fastclip.retrieval import search\n"
        "idx, _ = search(t, t, 1)\n"
        "assert list(idx[:, 0]) == [0, 1, 2], idx\n"
        "print(onnxruntime.get_available_providers())\n"
    )
    run = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "CUDAExecutionProvider" not in run.stdout
    cli = subprocess.run([str(venv / "bin" / "fastclip"), "embed", "--text", SENTENCES[0], "--model",
                          str(tiny_openclip_export), "--out", str(tmp_path / "cli.npy"), "-q"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr

    want_i = next(ImageEmbedding(tiny_openclip_export).embed([image]))
    want_t = np.stack(list(TextEmbedding(tiny_openclip_export).embed(SENTENCES[:3])))
    # Another onnxruntime release (CPU build) than this venv's: the same graph, float rounding apart.
    np.testing.assert_allclose(np.load(tmp_path / "i.npy"), want_i, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), want_t, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "cli.npy")[0], want_t[0], atol=1e-5)


def test_every_package_folder_is_listed_in_pyproject():
    """A subpackage missing from [tool.setuptools] packages imports from a checkout (and an editable
    install) but is absent from a wheel: list every folder with an __init__.py."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "fastclip").rglob("__init__.py")}
    found |= {"fastclip_export" + "".join("." + part for part in p.parent.relative_to(root / "export").parts)
              for p in (root / "export").rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject.toml packages: {sorted(found - listed)}"


# ------------------------------------------------------------------ onnxruntime beside fastembed's

# `import onnxruntime` after `pip install fastembed` (onnxruntime) beside fastclip (onnxruntime-gpu), then `pip
# uninstall onnxruntime`: the uninstall deletes every file the two builds shared, and what is left of the folder
# imports as a namespace package. "missing": no onnxruntime importable at all.
FAKE_ONNXRUNTIME = """
import sys, types
if sys.argv[1] == "missing":
    sys.modules["onnxruntime"] = None
else:
    leftover = types.ModuleType("onnxruntime")
    leftover.__path__ = [sys.argv[1]]
    sys.modules["onnxruntime"] = leftover
if sys.argv[2] == "library":
    import fastclip
    from fastclip.errors import ModelError
    try:
        fastclip.TextEmbedding
    except ModelError as exc:
        print("ModelError:", exc)
        sys.exit(1)
    sys.exit(0)
from fastclip.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("state", ["leftover-folder", "missing"])
def test_broken_onnxruntime_is_a_model_error_naming_the_fix(tiny_openclip_export, tmp_path, state):
    leftover = tmp_path / "site-packages" / "onnxruntime"
    (leftover / "capi").mkdir(parents=True)
    (leftover / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"")  # onnxruntime-gpu's own file stays
    where = "missing" if state == "missing" else str(leftover)
    cli = subprocess.run([sys.executable, "-c", FAKE_ONNXRUNTIME, where, "embed", "--text", "a dog", "--model",
                          str(tiny_openclip_export), "--out", str(tmp_path / "t.npy")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert "pip install --force-reinstall onnxruntime-gpu" in cli.stderr and "./cpu" in cli.stderr, cli.stderr
    assert "onnxruntime-gpu 1." in cli.stderr  # what is installed, from its metadata
    if state == "missing":
        assert "onnxruntime cannot be imported" in cli.stderr
    else:
        assert f"onnxruntime in {leftover} is broken: it has no get_available_providers" in cli.stderr
    library = subprocess.run([sys.executable, "-c", FAKE_ONNXRUNTIME, where, "library"], capture_output=True,
                             text=True, timeout=120)
    assert library.returncode == 1 and library.stdout.startswith("ModelError: onnxruntime"), library.stderr


def test_two_onnxruntime_builds_are_named_once_with_the_fix(tiny_openclip_export, tmp_path):
    """onnxruntime's metadata beside onnxruntime-gpu's (what `pip install fastembed` leaves): one warning per
    run, even with -q, and the run itself goes on."""
    site = tmp_path / "site"
    info = site / "onnxruntime-1.20.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\nVersion: 1.20.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "t.npy"
    cli = subprocess.run([sys.executable, "-m", "fastclip.cli", "-q", "embed", "--text", "a dog", "--text", "a cat",
                          "--model", str(tiny_openclip_export), "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    lines = [line for line in cli.stderr.splitlines() if "are installed together" in line]
    assert len(lines) == 1, cli.stderr
    assert "onnxruntime 1.20.0, onnxruntime-gpu 1." in lines[0]
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in lines[0]
    assert "fastembed-gpu" in lines[0] and "./cpu" in lines[0]
    want = np.stack(list(TextEmbedding(tiny_openclip_export).embed(["a dog", "a cat"])))
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)

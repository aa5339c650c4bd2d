"""Every ```python block of README.md runs as written.

Substitution rule, the only change made to a block before it runs: every occurrence of the model path
`models/clip-b32` is replaced by the path of the tiny exported test model (a real `fastclip export`
folder with random weights, 512-d like ViT-B/32). Each block runs as a script of its own (`python
block.py`, so `if __name__ == "__main__":` holds and spawned workers can re-import it), in a fresh folder
that holds what a reader is assumed to have beside them: `cat.jpg` and `dog.jpg`, and `photos/` with a few
JPEGs. Blocks that need an optional extra that is not installed (Ray) are skipped, not passed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.photos import photo_array

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_PATH = "models/clip-b32"


def python_blocks() -> list[tuple[str, str]]:
    """(the heading above, the code) of every ```python block, in README order."""
    blocks, heading, code = [], "", None
    for line in README.read_text(encoding="utf-8").splitlines():
        if code is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```python":
                code = []
        elif line.strip() == "```":
            blocks.append((heading, "\n".join(code) + "\n"))
            code = None
        else:
            code.append(line)
    return blocks


BLOCKS = python_blocks()


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, [h for h, _ in BLOCKS]


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory):
    """What the snippets assume is at hand: two photos by name and a folder of them."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("reader")
    (folder / "photos").mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(photo_array(name)).convert("RGB").save(folder / "photos" / f"{name}.jpg", quality=90)
    Image.fromarray(photo_array("chelsea")).save(folder / "cat.jpg", quality=90)
    Image.fromarray(photo_array("camera")).convert("RGB").save(folder / "dog.jpg", quality=90)
    return folder


def _id(block: tuple[str, str]) -> str:
    return re.sub(r"\W+", "-", block[0]).strip("-").lower() or "top"


@pytest.mark.parametrize("block", [
    pytest.param(b, id=f"{i}-{_id(b)}", marks=[pytest.mark.slow] if re.search(r"parallel=|EmbeddingPool|ray", b[1]) else [])
    for i, b in enumerate(BLOCKS)])
def test_python_block_runs_as_written(block, reader_folder, tiny_openclip_export, tmp_path):
    heading, code = block
    if re.search(r"^import ray|^from fastclip\.ray", code, re.M) and importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (the `ray` extra)")
    assert MODEL_PATH in code or "fastclip" not in code, f"{heading}: a block that loads a model uses {MODEL_PATH}"
    work = tmp_path / "work"
    work.mkdir()
    for item in reader_folder.iterdir():
        (work / item.name).symlink_to(item)
    script = work / "block.py"
    script.write_text(code.replace(MODEL_PATH, str(tiny_openclip_export)), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run([sys.executable, script.name], cwd=work, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"README block under '{heading}' failed:\n{code}\n{result.stdout}\n{result.stderr}"

"""README.md: short, its runnable blocks run as written, its links lead to the docs pages, and the two blocks
other tools read (CI's test command, the CPU install) are where they look for them.

How a block runs, and the marks a block may carry: tests/support/docblocks.py.
"""

from __future__ import annotations

import re

import pytest
from support import docblocks
from support.docblocks import ROOT, Block

README = ROOT / "README.md"
BLOCKS = docblocks.parse(README)
RUNNABLE = [b for b in BLOCKS if b.runnable]
MAX_LINES = 300  # fastembed's README is ~280 lines, open_clip's 624; the rest is the site in docs/
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _id(block: Block) -> str:
    return f"{block.line}-" + (re.sub(r"\W+", "-", block.heading).strip("-").lower() or "top")


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; move detail to a page of docs/"


def test_readme_has_one_runnable_example_per_surface():
    code = [b.code for b in RUNNABLE]
    assert any(b.lang == "python" and "ImageEmbedding(" in b.code for b in RUNNABLE)  # Python
    assert any(re.search(r"^fastclip (embed|search) ", c, re.M) for c in code)        # command line
    assert any(b.kind == "server" for b in RUNNABLE)                                   # server
    assert any("localhost:8000" in c for c in code)                                    # a request to it
    assert any("fastclip.ray" in c for c in code)                                      # Ray


def test_ci_reads_the_test_command_after_its_marker():
    """.ci/run takes the first line of the block after `<!-- test-command -->` as the command it runs."""
    marked = [b for b in BLOCKS if "test-command" in b.marks]
    assert len(marked) == 1 and marked[0].code == "python -m pytest -q\n", [b.code for b in marked]
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[marked[0].line - 2] == "<!-- test-command -->"


def test_cpu_install_block_is_marked_for_test_install():
    marked = [b for b in BLOCKS if "cpu-install" in b.marks]
    assert len(marked) == 1 and "pip install ./cpu" in marked[0].code


def test_every_block_is_run_or_says_why_not():
    assert {b.where: docblocks.problems(b) for b in BLOCKS if docblocks.problems(b)} == {}


def test_links_lead_to_files_and_to_every_docs_page():
    text = README.read_text(encoding="utf-8")
    targets = [m.group(1) for m in LINK.finditer(text) if "://" not in m.group(1)]
    assert [t for t in targets if not (ROOT / t).exists()] == []
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} - {"docs/index.md"}
    assert sorted(pages - set(targets)) == []


def test_models_section_points_to_the_models_page():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/models.md" in section and "catalog" in section
    assert 5 <= len(section.strip().splitlines()) <= 24  # a short section: the tables live on the pages


def test_slow_marks_ray_but_not_array():
    """A block is slow when it starts Ray or worker processes; `np.asarray` is neither (the old plain "ray"
    match marked every block that touched an array slow)."""
    def slow(code: str) -> bool:
        return docblocks.is_slow([Block(README, 1, "", "python", code)])

    assert not slow("import numpy as np\nx = np.asarray(img)\ny = np.array([1])\n")
    assert not slow("fastclip embed photos/ --out x.npy  # rows as an array\n")
    for code in ("import ray\n", "from fastclip.ray import ImageEmbedder\n", "fastclip embed x --engine ray --out d/\n",
                 "img.embed(paths, parallel=0)\n", "fastclip embed x --parallel 2 --out v.npy\n",
                 "with EmbeddingPool(model) as pool: pass\n"):
        assert slow(code), code


@pytest.mark.parametrize("block", [
    pytest.param(b, id=_id(b), marks=[pytest.mark.slow] if docblocks.is_slow(docblocks.chain(BLOCKS, b)) else [])
    for b in RUNNABLE])
def test_block_runs_as_written(block, photos_folder, tiny_openclip_export, tmp_path):
    docblocks.run_as_written(BLOCKS, block, photos_folder, tiny_openclip_export, tmp_path)

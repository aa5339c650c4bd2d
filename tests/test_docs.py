"""The documentation site (docs/, mkdocs.yml): every runnable block runs as written, every other block says why
not, the site builds with `mkdocs build --strict`, and the figures and paths it quotes are the code's.

How a block runs, and the marks a block may carry: tests/support/docblocks.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from support import docblocks
from support.docblocks import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = {page: docblocks.parse(page) for page in PAGES}
RUNNABLE = [(page, b) for page, blocks in BLOCKS.items() for b in blocks if b.runnable]
# PyPI's `fastclip` is an unrelated project, and our distribution name is not settled: installs are written
# from a checkout (`pip install .`, `pip install "./cpu[serve]"`), never by name.
PIP_BY_NAME = re.compile(r"pip3? install\s+(-\S+\s+)*['\"]?fastclip\b")


def _id(page, block) -> str:
    return f"{page.stem}-{block.line}-" + (re.sub(r"\W+", "-", block.heading).strip("-").lower() or "top")


def test_docs_has_pages_and_runnable_blocks():
    assert len(PAGES) >= 12, [p.name for p in PAGES]
    assert len(RUNNABLE) >= 15, len(RUNNABLE)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_block_is_run_or_says_why_not(page):
    found = {b.where: docblocks.problems(b) for b in BLOCKS[page]}
    assert {where: p for where, p in found.items() if p} == {}


def test_the_rules_refuse_a_block_that_neither_runs_nor_says_why(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "# t", "```bash", "pip install .", "```",                         # a pip command, unmarked
        "<!-- not-run -->", "```bash", "fastclip embed x", "```",          # a mark without its reason
        "<!-- skip: hub -->", "```python", "print(1)", "```",              # an unknown mark
        "```", "plain", "```",                                             # no language
        "<!-- not-run: a GPU -->", "```bash", "pip install .", "```",      # fine
        "```csv", "a,b", "```",                                            # fine: data
    ]), encoding="utf-8")
    found = [docblocks.problems(b) for b in docblocks.parse(page)]
    assert [len(f) for f in found] == [1, 1, 1, 1, 0, 0], found
    assert "pip" in found[0][0] and "REASON" in found[1][0] and "unknown mark" in found[2][0]


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=[*(p.stem for p in PAGES), "README"])
def test_no_install_of_fastclip_by_name(page):
    text = page.read_text(encoding="utf-8")
    assert [m.group(0) for m in PIP_BY_NAME.finditer(text)] == []


def test_pip_by_name_pattern():
    for bad in ("pip install fastclip", "pip install 'fastclip[serve]'", 'pip install -U "fastclip[ray]"',
                "pip install fastclip-cpu"):
        assert PIP_BY_NAME.search(bad), bad
    for good in ('pip install ".[serve]"', 'pip install "./cpu[serve]"', "pip install ./cpu", "pip install ."):
        assert not PIP_BY_NAME.search(good), good


@pytest.mark.parametrize("entry", [
    pytest.param(e, id=_id(*e), marks=[pytest.mark.slow] if docblocks.is_slow(docblocks.chain(BLOCKS[e[0]], e[1]))
                 else [])
    for e in RUNNABLE])
def test_block_runs_as_written(entry, photos_folder, tiny_openclip_export, tmp_path):
    page, block = entry
    docblocks.run_as_written(BLOCKS[page], block, photos_folder, tiny_openclip_export, tmp_path)


def test_site_builds_strict(tmp_path):
    """Strict: a warning (a page missing from the nav, a link to a missing page or #anchor) fails the build."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    output = result.stdout + result.stderr
    assert "No module named mkdocs" not in output, 'mkdocs is missing: pip install -e ".[test]" (or ".[docs]")'
    assert result.returncode == 0, output[-4000:]
    assert [line for line in output.splitlines() if line.startswith("WARNING")] == []
    for page in PAGES:
        built = tmp_path / "site" / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), built


def test_architecture_names_only_paths_that_exist_and_every_package():
    """The tree on the architecture page is the current one: no stale path, no package left out."""
    tree = next(b for b in BLOCKS[DOCS / "architecture.md"] if b.heading == "The tree" and b.lang == "text")
    named = [line.split()[0] for line in tree.code.splitlines() if line.strip()]
    assert [p for p in named if not (ROOT / p).exists()] == []
    packages = sorted(f"{p.parent.relative_to(ROOT)}/" for p in (ROOT / "fastclip").glob("*/__init__.py"))
    assert [p for p in packages if p not in named] == []


def test_verification_page_quotes_the_enforced_bounds():
    """The thresholds the page quotes are the ones the export and the tests enforce."""
    from fastclip_export.verify import THRESHOLDS
    from support.parity import BOUNDS

    text = (DOCS / "verification.md").read_text(encoding="utf-8")
    quoted = {m.group(1): (float(m.group(2)), float(m.group(3)))
              for m in re.finditer(r"^\| (fp32|fp16|int8)[^|]* \| ([\d.]+) \| ([\de.-]+) ×", text, re.M)}
    assert quoted == {p: (t.min_cosine, t.max_abs_rel) for p, t in THRESHOLDS.items()}
    fp32 = [bound for family, bound in BOUNDS.items() if not family.startswith(("fp16", "int8"))]
    span = " to ".join(f"{b:.0e}".replace("e-0", "e-") for b in (min(fp32), max(fp32)))  # 1e-6 to 1e-5
    assert f"per family, max abs diff ≤ {span} × max abs reference value of its row" in text

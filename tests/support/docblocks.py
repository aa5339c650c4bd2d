"""The fenced blocks of README.md and docs/*.md, and how each runs as a reader would run it.

A page's fences carry a language, and the language says what the block is:

- ```python: a script, run as `python block.py`, so `if __name__ == "__main__":` holds and spawned workers
  can re-import it.
- ```bash: shell commands, run as one `bash -euo pipefail` script. A block whose commands are `fastclip serve`
  lines starts each server, waits until its /ready answers 200, stops it with SIGTERM and expects exit 0.
  A block that talks to `localhost:8000` runs against a server of the test model started for it, and curl
  fails on any HTTP status >= 400 (`--fail-with-body` in the test's curlrc).
- ```console: `$ command` lines, each followed by the output it prints; the test compares stdout line for line.
- ```text, ```csv, ```json: data shown to the reader, never run.

HTML comments on the lines right above a fence mark it:

- `<!-- not-run: REASON -->`: a block that cannot run offline (a pip install, a hub download, a GPU, a
  benchmark of minutes); the reason is required.
- `<!-- continues -->`: runs after the block above it, in the same folder (a page read top to bottom).
- `<!-- cpu-install -->`, `<!-- test-command -->`: run by tests/test_install.py and by CI (.ci/run).

Any other comment there, a fence without a language, or a runnable block holding a `pip` command and no
`not-run` mark fails the test: a block is run or it says why not.

The only changes made to a block before it runs: `models/clip-b32` and `models/clip-l14` become the path of
the tiny exported test model (a real `fastclip export` folder with random weights), a server block's port
becomes a free one, and `localhost:8000` becomes that server's address. Every block runs in a fresh folder
that holds what a reader in a checkout has at hand: `cat.jpg`, `dog.jpg`, `photos/` with three JPEGs, and
the checkout's `tests/` and `benchmarks/` (symlinks to them). Hub access is off (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_RE = re.compile(r"models/clip-(?:b32|l14)")
SHOWN_MODEL = "models/clip-b32"
RUN_LANGS = ("python", "bash", "console")
DATA_LANGS = ("text", "csv", "json")
MARKS = ("not-run", "continues", "cpu-install", "test-command")
FENCE = re.compile(r"^```(.*)$")
COMMENT = re.compile(r"^<!--\s*(.*?)\s*-->$")
# Blocks that start Ray or worker processes: a minute or more on 2 cores. Word-bounded, so "array" is not Ray.
SLOW = re.compile(r"\bparallel=(?!None\b)|--parallel\b|\bEmbeddingPool\b|\bray\b")
CHECKOUT_LINKS = ("tests", "benchmarks")
SERVER_START_S = 180


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    heading: str
    lang: str
    code: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} (under '{self.heading}')"

    @property
    def runnable(self) -> bool:
        return self.lang in RUN_LANGS and not {"not-run", "cpu-install", "test-command"} & set(self.marks)

    @property
    def kind(self) -> str:
        if self.lang == "bash" and "fastclip serve" in self.code:
            return "server"
        return self.lang


def parse(page: Path) -> list[Block]:
    """Every fenced block of a page, with the heading above it and the marks on the lines right above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = FENCE.match(line)
        if not fence:
            i += 1
            continue
        marks, j = {}, i - 1
        while j >= 0 and (comment := COMMENT.match(lines[j].strip())):
            name, _, reason = comment.group(1).partition(":")
            marks[name.strip()] = reason.strip()
            j -= 1
        end = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), None)
        assert end is not None, f"{page.relative_to(ROOT)}:{i + 1}: fence never closed"
        blocks.append(Block(page, i + 1, heading, fence.group(1).strip(), "\n".join(lines[i + 1:end]) + "\n", marks))
        i = end + 1
    return blocks


def problems(block: Block) -> list[str]:
    """Why a block breaks the rules of this module's docstring (empty when it keeps them)."""
    out = []
    if block.lang not in RUN_LANGS + DATA_LANGS:
        out.append(f"fence language {block.lang!r}: use one of {RUN_LANGS + DATA_LANGS}")
    for name, reason in block.marks.items():
        if name not in MARKS:
            out.append(f"unknown mark <!-- {name} -->: one of {MARKS}")
        if name == "not-run" and not reason:
            out.append("<!-- not-run: REASON -->: say why it cannot run offline")
    if set(block.marks) - {"not-run"} and block.lang in DATA_LANGS:
        out.append(f"a ```{block.lang} block is data, never run: it takes no mark but not-run")
    if block.runnable and re.search(r"(^|[\s;&|(])pip3? ", block.code):
        out.append("a pip command must not run in the tests: mark the block <!-- not-run: REASON -->")
    return out


def chain(blocks: list[Block], block: Block) -> list[Block]:
    """The block and the blocks it continues, in page order."""
    at = blocks.index(block)
    start = at
    while "continues" in blocks[start].marks:
        start -= 1
        assert start >= 0, f"{block.where}: <!-- continues --> on a page's first block"
    return blocks[start:at + 1]


def is_slow(blocks: list[Block]) -> bool:
    return any(SLOW.search(b.code) for b in blocks)


def missing_extra(blocks: list[Block]) -> str | None:
    """The optional extra a block needs and this environment lacks (the block is skipped, not passed)."""
    for b in blocks:
        if re.search(r"\bray\b", b.code) and importlib.util.find_spec("ray") is None:
            return "Ray is not installed (the `ray` extra)"
        if (b.kind == "server" or "localhost:8000" in b.code) and importlib.util.find_spec("uvicorn") is None:
            return "the server's packages are not installed (the `serve` extra)"
    return None


def make_photos(folder: Path) -> None:
    """What the pages assume a reader has: two photos by name and a folder of them (scikit-image's photos)."""
    from PIL import Image

    from support.photos import photo_array

    (folder / "photos").mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(photo_array(name)).convert("RGB").save(folder / "photos" / f"{name}.jpg", quality=90)
    Image.fromarray(photo_array("chelsea")).save(folder / "cat.jpg", quality=90)
    Image.fromarray(photo_array("camera")).convert("RGB").save(folder / "dog.jpg", quality=90)


def work_folder(tmp: Path, photos: Path) -> tuple[Path, dict[str, str]]:
    """A fresh folder like a reader's checkout, and the environment the blocks run in."""
    work = tmp / "work"
    work.mkdir()
    for item in photos.iterdir():  # copies, not links: `find photos` must see a folder, as a reader's is
        shutil.copytree(item, work / item.name) if item.is_dir() else shutil.copyfile(item, work / item.name)
    for name in CHECKOUT_LINKS:
        (work / name).symlink_to(ROOT / name)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    # `fastclip` and `python` are this interpreter and this checkout's code, whatever PATH holds.
    (bin_dir / "fastclip").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fastclip.cli "$@"\n')
    (bin_dir / "fastclip").chmod(0o755)
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    (tmp / ".curlrc").write_text("fail-with-body\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "CURL_HOME": str(tmp)}
    return work, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fail(block: Block, what: str, result: subprocess.CompletedProcess | None = None) -> None:
    out = f"\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}" if result else ""
    raise AssertionError(f"{block.where}: {what}\n--- block\n{block.code}{out}")


def _wait_ready(proc: subprocess.Popen, port: int, block: Block) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _fail(block, f"the server exited with {proc.returncode} before /ready answered")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    _fail(block, f"/ready did not answer 200 within {SERVER_START_S} s")


def start_server(command: str, cwd: Path, env: dict[str, str], block: Block) -> tuple[subprocess.Popen, int]:
    """A `fastclip serve` line on a free port, once its /ready answers 200."""
    port = free_port()
    command = re.sub(r"\s+#.*$", "", command)  # a trailing comment would swallow the --port added below
    command = re.sub(r"--port\s+\d+", f"--port {port}", command)
    if f"--port {port}" not in command:
        command += f" --port {port}"
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(proc, port, block)
    except BaseException:
        stop_server(proc, expect_clean=False)
        raise
    return proc, port


def stop_server(proc: subprocess.Popen, expect_clean: bool = True) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not expect_clean, "the server did not exit within 60 s of SIGTERM"
        return proc.returncode


def command_lines(code: str) -> list[str]:
    """Shell lines with backslash continuations joined; comments and blank lines dropped."""
    out, pending = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def run(block: Block, work: Path, env: dict[str, str], model: Path) -> None:
    """Run one block as its language says, in `work`; raise AssertionError naming it when it fails."""
    code = MODEL_RE.sub(str(model), block.code)
    if block.kind == "python":
        script = work / "block.py"
        script.write_text(code, encoding="utf-8")
        result = subprocess.run([sys.executable, script.name], cwd=work, env=env, capture_output=True, text=True,
                                timeout=900)
        if result.returncode != 0:
            _fail(block, f"python exited with {result.returncode}", result)
    elif block.kind == "server":
        for command in command_lines(code):
            if "fastclip serve" not in command:
                _fail(block, f"a server block holds only `fastclip serve` lines, not {command!r}")
            proc, _ = start_server(command, work, env, block)
            rc = stop_server(proc)
            if rc != 0:
                _fail(block, f"`{command}` exited with {rc} on SIGTERM:\n{proc.stderr.read()[-3000:]}")
    elif block.kind == "bash":
        proc = None
        if "localhost:8000" in code:
            proc, port = start_server(f"fastclip serve --model {shlex.quote(str(model))}", work, env, block)
            code = code.replace("localhost:8000", f"127.0.0.1:{port}")
        try:
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env, capture_output=True,
                                    text=True, timeout=900)
        finally:
            if proc is not None:
                stop_server(proc)
        if result.returncode != 0:
            _fail(block, f"bash exited with {result.returncode}", result)
    elif block.kind == "console":
        run_console(block, work, env, model)
    else:
        raise AssertionError(f"{block.where}: a ```{block.lang} block does not run")


def run_console(block: Block, work: Path, env: dict[str, str], model: Path) -> None:
    """Each `$ command` must print exactly the lines shown under it (the test model's path shown as the page's)."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            steps.append((MODEL_RE.sub(str(model), line[2:]), []))
        else:
            assert steps, f"{block.where}: a ```console block starts with a `$ ` line"
            steps[-1][1].append(line)
    for command, shown in steps:
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=work, env=env, capture_output=True,
                                text=True, timeout=900)
        if result.returncode != 0:
            _fail(block, f"`{command}` exited with {result.returncode}", result)
        printed = result.stdout.replace(str(model), SHOWN_MODEL).rstrip("\n").splitlines()
        want = "\n".join(shown).rstrip("\n").splitlines()
        printed, want = [p.rstrip() for p in printed], [w.rstrip() for w in want]
        if printed != want:
            diff = "\n".join(difflib.unified_diff(want, printed, "shown", "printed", lineterm=""))
            _fail(block, f"`{command}` printed something other than the page shows:\n{diff}", result)


def run_as_written(blocks: list, block, photos_folder: Path, model: Path, tmp_path: Path) -> None:
    """`block` as a reader runs it: after the blocks it continues, in a fresh folder with the photos at hand;
    skipped (pytest) where it needs an extra that is not installed."""
    import pytest

    chained = chain(blocks, block)
    missing = missing_extra(chained)
    if missing:
        pytest.skip(missing)
    work, env = work_folder(tmp_path, photos_folder)
    for b in chained:
        run(b, work, env, model)

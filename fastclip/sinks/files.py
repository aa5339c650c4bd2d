"""Durable file steps shared by the journal, the encoders and the Ray parts: fsync, atomic JSON, renames,
the lock that keeps two runs off one output, and the fault injection the kill tests use."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import OutputError
from .header import dumps


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform (Windows); rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path, what: str) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="ascii"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: unreadable {what} ({exc})") from None


def write_lines(path: Path, head: Iterable[str], lines: Iterable[str]) -> None:
    """ASCII lines (JSON rows) to `path`, fsynced before returning."""
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for line in head:
            f.write(line + "\n")
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def publish(work: Path, renames: Iterable[tuple[str, str]], dest: Path) -> None:
    """Move each finished file from `work` to `dest` in order (the main file last), then fsync `dest`.
    A file already gone from `work` was moved by an earlier, interrupted call: the steps can be replayed."""
    for step, (src, name) in enumerate(renames):
        if (work / src).exists():
            os.replace(work / src, dest / name)
            fault(f"rename-{step}")
    fsync_dir(dest)


def lock_folder(folder: Path, what: str, name: str):
    """An exclusive advisory lock on `folder`, held by the returned open file `folder/name` (None where there
    is no flock); closing it releases the lock. Raises OutputError when another run holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; two runs on one output are the user's problem there
        return None
    lock = open(folder / name, "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OutputError(f"another fastclip run is writing {what} right now (it holds {folder})") from None
    return lock


def fault(step: str) -> None:
    """Fault injection for the kill tests (off unless FASTCLIP_FAULT is set): a comma-separated list of
    steps at which this process kills itself with SIGKILL (e.g. "vectors-3": batch 3's vectors written,
    its journal lines not; "checkpoint-3"; "finish-npy"; "rename-0"; "part-2": a Ray run's third part in
    place), and "slow", which sleeps 0.1 s after every checkpoint or part so that a test can signal a run
    that is still busy."""
    faults = os.environ.get("FASTCLIP_FAULT")
    if not faults:
        return
    faults = faults.split(",")
    if step in faults:
        os.kill(os.getpid(), signal.SIGKILL)
    if "slow" in faults and step.startswith(("checkpoint-", "part-")):
        time.sleep(0.1)

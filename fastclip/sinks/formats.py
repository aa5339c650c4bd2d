"""The table of output formats, keyed by suffix, and the checks on an output path before any work.

Each format is a module (its codec: these functions) with

    encode(rows, header, work, out) -> (renames, header)   write the final file(s) inside the work folder
                                                           `work`; renames: (name in work, name beside out)
                                                           in the order to apply them
    decode(path, *, mmap, verify) -> EmbeddingsFile        read it back

`rows` is what the journal (or a Ray part) holds, see journal.Rows. Adding a format is one module and one
line in FORMATS; the journal, the rename protocol, the errors file and the reader need no change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from ..errors import OutputError
from .header import EmbeddingsFile, dumps
from .jsonl import decode as jsonl_decode, encode as jsonl_encode
from .npy import decode as npy_decode, encode as npy_encode, npy_of_side_file, side_files as npy_side_files
from .parquet import needs as parquet_needs, decode as parquet_decode, encode as parquet_encode


@dataclass(frozen=True)
class Format:
    codec: Any  # encode / decode, and side_files(out) when the format leaves more than one file
    needs: tuple[str, Callable[[], str]] | None = None  # (module, its error when missing), checked before any work

    def side_files(self, out: Path) -> list[Path]:
        side = getattr(self.codec, "side_files", None)
        return side(out) if side is not None else []


def decode_jsonl(path: Path, *, mmap: bool = True, verify: bool = True) -> EmbeddingsFile:
    """A .jsonl file, or the side file of an .npy (OUT.npy.jsonl), which reads the pair."""
    npy = npy_of_side_file(path)
    if npy is not None:
        return npy_decode(npy, mmap=mmap, verify=verify)
    return jsonl_decode(path, mmap=mmap, verify=verify)


FORMATS: dict[str, Format] = {
    ".npy": Format(SimpleNamespace(encode=npy_encode, decode=npy_decode, side_files=npy_side_files)),
    ".jsonl": Format(SimpleNamespace(encode=jsonl_encode, decode=decode_jsonl)),
    ".parquet": Format(SimpleNamespace(encode=parquet_encode, decode=parquet_decode), needs=("pyarrow", parquet_needs)),
}
SUFFIXES = tuple(FORMATS)


def format_of(out: str | os.PathLike) -> Format:
    out = Path(out)
    found = FORMATS.get(out.suffix.lower())
    if found is None:
        raise OutputError(f"{out.name}: not an embeddings file name; it must end in one of {', '.join(SUFFIXES)}")
    return found


def errors_path(out: str | os.PathLike) -> Path:
    """``OUT.<suffix>.errors.jsonl``: ``{"index": i, "path"|"text": ..., "error": "..."}`` per failed input."""
    out = Path(out)
    return out.with_name(out.name + ".errors.jsonl")


def error_line(index: int, key: str, item: str, reason: str) -> str:
    """One line of an errors file: the failed input's index, its name under `key` ("path" | "text"), why."""
    return dumps({"index": int(index), key: item, "error": reason})


def output_files(out: str | os.PathLike) -> list[Path]:
    """Every file a finished run leaves for `out` (the side file for .npy, the errors file if any)."""
    out = Path(out)
    return [out, *format_of(out).side_files(out), errors_path(out)]


def check_output(out: str | os.PathLike) -> Path:
    """Fail before any work when `out` cannot be written: unknown suffix, a directory, a parent that cannot
    be created, or a folder we may not write in. Creates the missing parent folders."""
    out = Path(out)
    needs = format_of(out).needs
    if needs is not None:
        try:
            __import__(needs[0])
        except ImportError:
            raise OutputError(needs[1]()) from None
    for path in output_files(out):
        if path.is_dir():
            raise OutputError(f"{path} is a directory, not a file name (such as {path / ('vectors' + out.suffix)})")
        if path.exists() and not path.is_file():
            raise OutputError(f"{path} exists and is not a regular file")
    check_writable_folder(out.parent, probe_name=f".{out.name}.probe{os.getpid()}", what=f"the folder for {out}")
    return out


def check_writable_folder(folder: Path, *, probe_name: str, what: str) -> None:
    """Create `folder` if missing and prove a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what}: {exc.strerror or exc}") from None
    probe = folder / probe_name
    try:
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror or exc}") from None

"""The commands our messages tell people to run: the `pip install` that adds an extra to this fastclip, and
the `fastclip export` that adds a precision to a model folder.

fastclip installs from a checkout, as fastclip-onnx (`pip install .`) or fastclip-onnx-cpu (`pip install
./cpu`). PyPI's `fastclip` is another project: installing it by that name (with an extra, as our hints once
said) writes its own fastclip/__init__.py over ours, and `fastclip --help` fails on `cannot import name 'CLIP'`.
So a hint names the place this fastclip was installed from, read from the installed distribution (PEP 610's
direct_url.json), or the source tree it runs from.

Only error paths call these: importlib.metadata is imported on first use, not by `fastclip --help`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .defaults import DISTRIBUTION, PRECISIONS

__all__ = ["Origin", "origin", "install_hint", "upgrade_hint", "cpu_install_hint", "export_hint"]


@dataclass(frozen=True)
class Origin:
    """Where the running fastclip came from: what pip installs again, and the checkout when there is one."""

    target: str  # a folder or archive path for pip, or a distribution name
    is_path: bool
    editable: bool = False
    checkout: Path | None = None  # the repository root (its cpu/ folder is the CPU build)
    installed: bool = True  # False: run from a source tree that pip did not install


def origin() -> Origin:
    import fastclip
    from importlib import metadata

    package = Path(fastclip.__file__).resolve().parent
    for name in (DISTRIBUTION, DISTRIBUTION + "-cpu"):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        where = getattr(dist, "_path", None)  # the .dist-info / .egg-info folder
        if (where is not None and Path(where).suffix == ".egg-info" and Path(where).resolve().parent == package.parent
                and (package.parent / "pyproject.toml").is_file()):
            continue  # the .egg-info `pip install -e .` leaves in the checkout itself: not an install
        try:
            direct = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            direct = {}
        path = _file_path(direct.get("url", ""))
        root = None if path is None or "dir_info" not in direct else (path.parent if name.endswith("-cpu") else path)
        if direct.get("dir_info", {}).get("editable"):
            # An editable install serves its checkout's fastclip/; a copy found first on sys.path is another one.
            if root is not None and package.parent == root:
                return Origin(str(path), True, editable=True, checkout=root)
            continue
        if Path(dist.locate_file("fastclip/__init__.py")).resolve().parent != package:
            continue  # metadata left from another install: not the fastclip running here
        if path is not None:
            return Origin(str(path), True, checkout=root)
        return Origin(name, False)
    if (package.parent / "pyproject.toml").is_file():
        return Origin(str(package.parent), True, checkout=package.parent, installed=False)
    return Origin(DISTRIBUTION, False)


def _file_path(url: str) -> Path | None:
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(url)
    return Path(url2pathname(parsed.path)) if parsed.scheme == "file" else None


def _shown(path: str | Path) -> str:
    """A path as typed from the working folder: "." or "./cpu" inside it, else absolute."""
    path = Path(path)
    try:
        rel = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return "." if rel == Path(".") else f"./{rel.as_posix()}"


def _pip(target: str, extra: str | None, editable: bool = False) -> str:
    requirement = f"{target}[{extra}]" if extra else target
    return f'pip install {"-e " if editable else ""}"{requirement}"'


def install_hint(extra: str | None = None) -> str:
    """The `pip install` that adds `extra` (e.g. "serve") to this fastclip: from the folder or file it was
    installed from (editable again if it was), else from the source tree it runs from, else by name."""
    o = origin()
    return _pip(_shown(o.target) if o.is_path else o.target, extra, o.editable)


def upgrade_hint() -> str:
    """How to get a newer fastclip, from where this one came."""
    o = origin()
    if o.checkout is None:
        return f"install a newer {DISTRIBUTION} in place of {o.target}" if o.is_path else f'pip install -U "{o.target}"'
    pull = f"update the checkout in {_shown(o.checkout)} (git pull)"
    return pull if o.editable or not o.installed else f"{pull}, then {install_hint()}"


def cpu_install_hint() -> str:
    """The install of fastclip's CPU build (onnxruntime, not onnxruntime-gpu)."""
    o = origin()
    if o.checkout is not None:
        return _pip(_shown(o.checkout / "cpu"), None)
    return f"the CPU build from the cpu/ folder of a checkout: pip install ./cpu ({DISTRIBUTION}-cpu)"


def export_hint(folder: Path, precisions: Iterable[str]) -> str:
    """The `fastclip export` that remakes `folder` with `precisions`, from the source its manifest records.

    An export writes a whole folder (every variant verified against the reference), so adding a precision is
    exporting again with the list. A folder that fastclip did not export (fastembed's, a hub cache) is left
    alone: the command writes a new folder instead.
    """
    wanted = ",".join(p for p in PRECISIONS if p in set(precisions))
    try:
        source = json.loads((Path(folder) / "fastclip.json").read_text(encoding="utf-8")).get("source") or {}
    except (OSError, ValueError, AttributeError):
        source = {}
    if not source:
        return (f"fastclip export MODEL NEW_FOLDER --precision {wanted}, then --model NEW_FOLDER "
                f"(MODEL: the CLIP checkpoint {folder} was made from)")
    kind, model, pretrained = source.get("kind"), source.get("model"), source.get("pretrained")
    options = ""
    if kind == "open_clip" and model:
        arg = f"open_clip:{model}"
        options = f" --pretrained {shlex.quote(str(pretrained))}" if pretrained else ""
    elif kind == "hf" and model and "/" in model:
        arg = shlex.quote(model)  # a hub id (a local checkpoint is recorded by its folder's name only)
    else:
        arg = "MODEL"
    # OUT_DIR right after MODEL: both are optional positionals, which argparse cannot split around an option.
    command = f"fastclip export {arg} {shlex.quote(str(folder))}{options} --precision {wanted} --overwrite"
    return command if arg != "MODEL" else f"{command} (MODEL: the checkpoint {model!r} it was exported from)"

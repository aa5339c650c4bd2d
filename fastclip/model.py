"""Resolve a model name to a local folder and its manifest.

A model name is a folder, or a Hugging Face repo id fetched and cached through huggingface_hub. The
folder's layout (ours, or a published one: fastclip.layouts) gives its manifest.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError, first_line
from .hub import not_cached, unreachable
from .layouts import read_manifest
from .manifest import Manifest

# fastembed's published CLIP ViT-B/32 towers: the default, so a new user gets vectors with no export.
DEFAULT_VISION_REPO = "Qdrant/clip-ViT-B-32-vision"
DEFAULT_TEXT_REPO = "Qdrant/clip-ViT-B-32-text"


def resolve_folder(
    name: str | Path,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
) -> Path:
    """A local folder for `name`: the folder itself, or a hub snapshot (downloaded once, then cached)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    text = str(name)
    if path.exists():
        raise ModelError(f"{text}: is a file; pass the model folder (the one holding fastclip.json or model.onnx)")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local:
        raise ModelError(f"{text}: no such model folder (and not a hub repo id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = None if local_files_only else unreachable()
    try:
        return Path(
            snapshot_download(
                repo_id=text,
                revision=revision,
                cache_dir=str(cache_dir) if cache_dir else None,
                local_files_only=local_files_only or offline is not None,
                # Skip torch weights some repos keep beside the ONNX files: the runtime never reads them.
                ignore_patterns=["*.safetensors", "*.bin", "*.pt", "*.msgpack", "*.h5"],
            )
        )
    except LocalEntryNotFoundError:
        raise ModelError(not_cached(
            text, offline, "pass a model folder instead (`--model PATH` on the command line, the model argument "
            "in Python), or make one with `fastclip export`", cache_dir)) from None
    except RepositoryNotFoundError:
        raise ModelError(f"{text}: no such repo on the hub (or it is private: log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = first_line(exc)
        raise ModelError(f"{text}: could not fetch from the hub: {first}") from None


def load_manifest(folder: Path) -> Manifest:
    """The folder's manifest: its fastclip.json, or one its layout reader derives (fastclip.layouts)."""
    return read_manifest(folder)

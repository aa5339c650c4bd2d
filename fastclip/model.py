"""Resolve a model name to a local folder and its manifest.

A model name is a folder, a name from the catalog of published models (fastclip.layouts.catalog:
`fastclip models` lists them), or a Hugging Face repo id; hub repos are fetched and cached through
huggingface_hub. The folder's layout (ours, or a published one: fastclip.layouts) gives its manifest.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError, first_line
from .hub import not_cached, unreachable
from .layouts import catalog, read_manifest
from .manifest import Manifest

# fastembed's published CLIP ViT-B/32 towers: the default, so a new user gets vectors with no export.
DEFAULT_VISION_REPO = "Qdrant/clip-ViT-B-32-vision"
DEFAULT_TEXT_REPO = "Qdrant/clip-ViT-B-32-text"


# Torch weights some repos keep beside the ONNX files: the runtime never reads them.
TORCH_WEIGHTS = ["*.safetensors", "*.bin", "*.pt", "*.msgpack", "*.h5"]


def resolve_folder(
    name: str | Path,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
    tower: str | None = None,
) -> Path:
    """A local folder for `name`: the folder itself, or a hub snapshot (downloaded once, then cached).

    A catalog name resolves to its repo; `tower` ("vision" or "text") picks the repo holding that tower
    where a model is published as one repo per tower (fastembed's CLIP ViT-B/32).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    text = str(name)
    if path.exists():
        raise ModelError(f"{text}: is a file; pass the model folder (the one holding fastclip.json or model.onnx)")
    entry = catalog.find(text)
    if entry is None and (text.startswith((".", "/", "~")) or text.count("/") != 1):
        raise ModelError(f"{text}: no such model folder, catalog name or hub repo id (owner/name){_suggest(text)}")
    repo = catalog.repo_for(entry, tower, text) if entry else text
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = None if local_files_only else unreachable()
    try:
        return Path(
            snapshot_download(
                repo_id=repo,
                revision=revision,
                cache_dir=str(cache_dir) if cache_dir else None,
                local_files_only=local_files_only or offline is not None,
                ignore_patterns=TORCH_WEIGHTS + (catalog.skip_patterns(entry) if entry else []),
            )
        )
    except LocalEntryNotFoundError:
        what = text if repo == text else f"{text} ({repo})"
        raise ModelError(not_cached(
            what, offline, "pass a model folder instead (`--model PATH` on the command line, the model argument "
            "in Python), or make one with `fastclip export`", cache_dir) + (_suggest(text) if entry is None else "")) from None
    except RepositoryNotFoundError:
        raise ModelError(f"{repo}: no such repo on the hub (or it is private: log in with `hf auth login`)"
                         f"{_suggest(text) if entry is None else ''}") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = first_line(exc)
        raise ModelError(f"{repo}: could not fetch from the hub: {first}") from None


def _suggest(name: str) -> str:
    """The catalog names close to a name that is not one, as the end of an error message."""
    close = [c for c in catalog.close_matches(name) if c.lower() != name.lower()]
    return f"; close catalog names: {', '.join(close)} (`fastclip models` lists them all)" if close else ""


def split_towers(name: str | Path) -> bool:
    """Whether `name` is a catalog model published as one repo per tower (not a local folder)."""
    if Path(name).expanduser().is_dir():
        return False
    entry = catalog.find(str(name))
    return entry is not None and catalog.split_towers(entry)


def load_manifest(folder: Path) -> Manifest:
    """The folder's manifest: its fastclip.json, or one its layout reader derives (fastclip.layouts)."""
    return read_manifest(folder)

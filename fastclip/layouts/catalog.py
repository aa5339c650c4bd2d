"""Models by name: the catalog (catalog.json beside this module) maps a name to the hub repos holding it.

The JSON is data, written by `python -m fastclip_export.catalog` from facts about published repos and from
open_clip's own configs; nothing here computes it. A name is an entry's name, one of its aliases or one of
its towers' repo ids, compared without case. Most entries hold both towers in one repo; fastembed publishes
CLIP ViT-B/32 as one repo per tower, and either of its names then stands for both.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from pathlib import Path
from typing import Any

__all__ = ["CATALOG_FILE", "TOWERS", "models", "find", "repo_for", "split_towers", "close_matches", "tower_file",
           "skip_patterns", "list_supported_models"]

CATALOG_FILE = Path(__file__).with_name("catalog.json")
TOWERS = ("vision", "text")


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return json.loads(CATALOG_FILE.read_text(encoding="utf-8"))


def models() -> list[dict[str, Any]]:
    """Every entry, in catalog order (read-only: list_supported_models() hands out copies)."""
    return _load()["models"]


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, tuple[str, dict[str, Any]]]:
    """lower-cased name -> (the name as written, its entry). The first entry to claim a name keeps it;
    tests/test_catalog.py holds every name to one entry."""
    index: dict[str, tuple[str, dict[str, Any]]] = {}
    for entry in models():
        for key in (entry["name"], *entry["aliases"], *entry["towers"].values()):
            index.setdefault(key.lower(), (key, entry))
    return index


def find(name: str) -> dict[str, Any] | None:
    """The entry `name` names, or None."""
    hit = _index().get(str(name).lower())
    return hit[1] if hit else None


def split_towers(entry: dict[str, Any]) -> bool:
    """Whether the entry's towers live in two repos (fastembed's CLIP), not one."""
    return len(set(entry["towers"].values())) > 1


def repo_for(entry: dict[str, Any], tower: str | None, asked: str) -> str:
    """The hub repo to fetch for `tower` of `entry`, asked for as `asked`. Without a tower: the entry's one
    repo, or, where each tower is its own repo, the repo `asked` names (the vision one for a short name)."""
    if tower is not None:
        return entry["towers"][tower]
    for repo in entry["towers"].values():
        if repo.lower() == asked.lower():
            return repo
    return entry["towers"]["vision"]


def tower_file(entry: dict[str, Any], tower: str) -> str:
    """The path of `tower`'s fp32 graph in the entry's repo, as its layout places it."""
    return _load()["layouts"][entry["layout"]]["files"][tower]


def skip_patterns(entry: dict[str, Any]) -> list[str]:
    """Files of the entry's layout that fastclip never opens: left out of the download."""
    return list(_load()["layouts"][entry["layout"]]["skip"])


def close_matches(name: str, n: int = 5) -> list[str]:
    """Catalog names close to `name` (a typo, another spelling), best first."""
    index = _index()
    return [index[k][0] for k in difflib.get_close_matches(str(name).lower(), list(index), n=n, cutoff=0.6)]


def list_supported_models() -> list[dict[str, Any]]:
    """Every named model as a dict (copies): the catalog's fields, plus fastembed's `model` and `dim` keys."""
    return [dict(copy.deepcopy(entry), model=entry["name"], dim=entry["embed_dim"]) for entry in models()]

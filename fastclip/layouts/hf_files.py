"""What a folder's Hugging Face tokenizer files say: special token ids, padding side, context length.

transformers reads `tokenizer_config.json` (and `special_tokens_map.json` for what it leaves out) to know
which token pads, starts and ends a text, and on which side it pads; the ids come from `tokenizer.json`.
The layout readers need the same answers as the reference tokenizer, so they read them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, first_line
from .graph import read_json

__all__ = ["TokenizerFacts", "tokenizer_facts"]

# transformers writes this for "no limit" (int(1e30)) into model_max_length; any value past it says nothing.
_NO_LIMIT = 1 << 20


@dataclass(frozen=True)
class TokenizerFacts:
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    sep_token_id: int | None
    padding_side: str
    model_max_length: int | None  # None: the files set no usable limit


def _name(value: Any) -> str | None:
    # A token is written as a string or as an AddedToken-like {"content": ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def tokenizer_facts(folder: Path) -> TokenizerFacts:
    """The special tokens and padding of the tokenizer in `folder` (tokenizer.json + its configs), or ModelError."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{folder}: no tokenizer.json (the text tower's tokenizer); found "
                         f"{sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'no folder'}")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception type
        raise ModelError(f"{path}: cannot load tokenizer ({first_line(exc)})") from None
    cfg = {**read_json(folder / "special_tokens_map.json"), **read_json(folder / "tokenizer_config.json")}

    def token_id(key: str) -> int | None:
        name = _name(cfg.get(key))
        if name is None:
            return None
        found = tok.token_to_id(name)
        if found is None:
            raise ModelError(f"{folder}: tokenizer_config.json names {key} {name!r}, which tokenizer.json does not hold")
        return int(found)

    side = cfg.get("padding_side", "right")
    if side not in ("right", "left"):
        raise ModelError(f"{folder / 'tokenizer_config.json'}: padding_side {side!r} is neither 'right' nor 'left'")
    limit = cfg.get("model_max_length")
    usable = isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < limit < _NO_LIMIT
    return TokenizerFacts(
        bos_token_id=token_id("bos_token"), eos_token_id=token_id("eos_token"), pad_token_id=token_id("pad_token"),
        sep_token_id=token_id("sep_token"), padding_side=side, model_max_length=int(limit) if usable else None,
    )

"""Tokenization for CLIP text towers: `tokenizer.json` (the `tokenizers` library) plus, for models exported
from open_clip, open_clip's own text cleaning reproduced in Python.

Two references, chosen by the manifest's `text.cleaning`:

* "open_clip": open_clip's SimpleTokenizer (clean="lower"): ``ftfy.fix_text``, ``html.unescape`` twice,
  strip, collapse whitespace, ``str.lower()``; then regex split + byte-level BPE. The cleaning runs here
  in Python with the very functions open_clip calls, and the tokenizer.json normalizer is switched off:
  it would re-apply NFC (html.unescape can produce decomposed text that open_clip leaves as is) and a
  per-character lowercase (Python's lower() handles e.g. a final sigma in context; Rust's per-char one
  does not). The split and BPE of a file written by `fastclip_export.tokenizer_files` are open_clip's.
* "none": the text goes to tokenizer.json untouched, as transformers' CLIPTokenizer(Fast) feeds it.

Truncation keeps the end token last, as both references do: open_clip cuts ``[sot] + ids + [eot]`` to
`context_length` and writes `eot` into the last slot; transformers (tokenizers' truncation) keeps
``context_length - 2`` content tokens between the special tokens. These are the same sequence.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import ModelError, TextError
from .manifest import TextSpec

__all__ = ["TextTokenizer", "open_clip_clean"]


# Printable ASCII and tab/newline/return, without "&": ftfy.fix_text and html.unescape return such text
# unchanged (no mojibake, entity, control or width fix applies), so it skips them. ftfy alone costs
# ~30-60 us per short text, more than the rest of tokenizing one query (single-item latency, issue 13).
_PLAIN_ASCII = re.compile(r"[\t\n\r -%'-~]*")


def open_clip_clean(text: str) -> str:
    """open_clip.tokenizer._clean_lower: whitespace_clean(basic_clean(text)).lower()."""
    if _PLAIN_ASCII.fullmatch(text):
        return " ".join(text.split()).lower()
    import ftfy  # imported on first use: only open_clip-exported models need it

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = " ".join(text.split())
    return text.strip().lower()


class TextTokenizer:
    """texts -> int64 (B, L) token ids, padded with the manifest's pad id.

    L is the longest sequence of the batch when the graph takes dynamic lengths (`spec.dynamic_length`),
    else `spec.context_length`.
    """

    def __init__(self, tokenizer_json: str | Path, spec: TextSpec):
        self.spec = spec
        self.context_length = spec.context_length
        path = Path(tokenizer_json)
        try:
            self._json = path.read_text(encoding="utf-8")
            tok = Tokenizer.from_str(self._json)
        except Exception as exc:  # OSError, UnicodeDecodeError, or the plain Exception tokenizers raises
            raise ModelError(f"{path}: cannot load tokenizer ({exc})") from None
        self._clean = open_clip_clean if spec.cleaning == "open_clip" else None
        if self._clean is not None:
            tok.normalizer = None  # see module doc: Python already did all of open_clip's cleaning
        tok.no_padding()
        tok.enable_truncation(max_length=spec.context_length, stride=0, strategy="longest_first", direction="right")
        pad_token = tok.id_to_token(spec.pad_token_id) or ""
        tok.enable_padding(
            direction="right",
            pad_id=spec.pad_token_id,
            pad_token=pad_token,
            length=None if spec.dynamic_length else spec.context_length,
        )
        self._tok = tok
        self._counter: Tokenizer | None = None  # untruncated twin, built when a too-long text is reported

    def _prepare(self, texts: Sequence[str], start_index: int) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of strings, not a single str; wrap it in a list")
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text #{start_index + i}: expected str, got {type(t).__module__}.{type(t).__qualname__}")
            out.append(self._clean(t) if self._clean is not None else t)
        return out

    def _encode(self, texts: Sequence[str], start_index: int, truncate: bool):
        prepared = self._prepare(texts, start_index)
        if not prepared:
            return []
        encodings = self._tok.encode_batch(prepared, add_special_tokens=True)
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    n = self.count_tokens(prepared[i], _cleaned=True)
                    raise TextError(
                        start_index + i,
                        f"{n} tokens (with start and end tokens) exceed the context length "
                        f"{self.context_length}; shorten the text or pass truncate=True",
                    )
        return encodings

    def encode_batch(self, texts: Sequence[str], *, start_index: int = 0, truncate: bool = True) -> np.ndarray:
        """int64 (B, L) ids. `start_index` offsets the indices named in errors (position in the stream)."""
        encodings = self._encode(texts, start_index, truncate)
        if not encodings:
            width = 0 if self.spec.dynamic_length else self.context_length
            return np.zeros((0, width), dtype=np.int64)
        return np.array([e.ids for e in encodings], dtype=np.int64)

    def encode_batch_with_mask(
        self, texts: Sequence[str], *, start_index: int = 0, truncate: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention_mask), both int64 (B, L); the mask is 1 on real tokens, 0 on padding.

        Use this mask rather than ``ids != pad`` : transformers' CLIP pads with the end token itself.
        """
        encodings = self._encode(texts, start_index, truncate)
        if not encodings:
            width = 0 if self.spec.dynamic_length else self.context_length
            empty = np.zeros((0, width), dtype=np.int64)
            return empty, empty.copy()
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def count_tokens(self, text: str, *, _cleaned: bool = False) -> int:
        """Token count of `text` before truncation, start and end tokens included."""
        if self._counter is None:
            counter = Tokenizer.from_str(self._json)
            if self._clean is not None:
                counter.normalizer = None
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        if not _cleaned and self._clean is not None:
            text = self._clean(text)
        return len(self._counter.encode(text, add_special_tokens=True).ids)

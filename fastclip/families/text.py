"""Text recipes per family, keyed by the manifest's `text` strings: cleaners and padding sides.

Cleaners reproduce open_clip's `get_clean_fn` (tokenizer.py) with the same Python functions, in the order
open_clip applies them: `basic_clean` (ftfy.fix_text, html.unescape twice, strip), then

* "open_clip" / "lower":  collapse whitespace, str.lower()   (open_clip's default SimpleTokenizer; HFTokenizer
  with clean="lower"). "open_clip" also switches the tokenizer.json normalizer off: the CLIP BPE file
  written by the export carries an approximating normalizer for other readers (see fastclip_export.tokenizer_files).
* "whitespace":           collapse whitespace                (HFTokenizer's default: XLM-R, mT5, NLLB, BERT, xlm-v)
* "canonicalize":         "_" -> " ", drop string.punctuation, lower, collapse whitespace   (SigLIP, SigLIP 2, mT5
  worldwide: big_vision's prompt canonicalization)
* "none":                 the text reaches tokenizer.json untouched (transformers' tokenizers are the reference).

Every cleaner acts within ASCII-whitespace-separated words (ftfy per line, entity names stop at whitespace,
"_" -> " " only splits a word further, punctuation removal deletes inside a word), which is what lets
fastclip.text tokenize a bounded head of a long text and still get the whole text's first tokens.
"""

from __future__ import annotations

import html
import re
import string
from dataclasses import dataclass
from typing import Callable

__all__ = ["Cleaner", "CLEANERS", "PADDING_SIDES", "ID_DTYPES", "basic_clean"]

# Printable ASCII and tab/newline/return, without "&": ftfy.fix_text and html.unescape return such text
# unchanged (no mojibake, entity, control or width fix applies), so it skips them. ftfy alone costs
# ~30-60 us per short text, more than the rest of tokenizing one query (single-item latency, issue 13).
_PLAIN_ASCII = re.compile(r"[\t\n\r -%'-~]*")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def basic_clean(text: str) -> str:
    """open_clip.tokenizer.basic_clean: ftfy.fix_text, html.unescape twice, strip."""
    if _PLAIN_ASCII.fullmatch(text):
        return text.strip()
    import ftfy  # imported on first use: only open_clip-exported models need it

    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _whitespace(text: str) -> str:
    return " ".join(basic_clean(text).split())


def _lower(text: str) -> str:
    return _whitespace(text).lower()


def _canonicalize(text: str) -> str:
    # open_clip.tokenizer.canonicalize_text(basic_clean(text)) with no kept punctuation string.
    text = basic_clean(text).replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


@dataclass(frozen=True)
class Cleaner:
    clean: Callable[[str], str] | None  # None: the text goes to the tokenizer as given
    keep_normalizer: bool  # False: the tokenizer.json normalizer is switched off (Python did all of it)


CLEANERS: dict[str, Cleaner] = {
    "open_clip": Cleaner(_lower, keep_normalizer=False),
    "lower": Cleaner(_lower, keep_normalizer=True),
    "whitespace": Cleaner(_whitespace, keep_normalizer=True),
    "canonicalize": Cleaner(_canonicalize, keep_normalizer=True),
    "none": Cleaner(None, keep_normalizer=True),
}

# Where padding goes: transformers' `padding_side` of the reference tokenizer (tokenizer_config.json).
PADDING_SIDES = ("right", "left")

# The integer type of the graph's token-id (and mask) inputs: torch's default int64, or int32 where the
# publisher traced with int32 ids (Immich's textual graphs). The runner casts the tokenizer's int64 ids.
ID_DTYPES = ("int64", "int32")

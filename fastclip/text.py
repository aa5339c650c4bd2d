"""Tokenization for CLIP text towers: `tokenizer.json` (the `tokenizers` library) plus, for models exported
from open_clip, open_clip's own text cleaning reproduced in Python.

Two references, chosen by the manifest's `text.cleaning`:

* "open_clip": open_clip's SimpleTokenizer (clean="lower"): ``ftfy.fix_text``, ``html.unescape`` twice,
  strip, collapse whitespace, ``str.lower()``; then regex split + byte-level BPE. The cleaning runs here
  in Python with the very functions open_clip calls, and the tokenizer.json normalizer is switched off:
  it would re-apply NFC (html.unescape can produce decomposed text that open_clip leaves as is) and a
  per-character lowercase (Python's lower() handles e.g. a final sigma in context; Rust's per-char one
  does not). The split and BPE of a file written by `fastclip_export.tokenizer_files` are open_clip's.
* "lower", "whitespace", "canonicalize": open_clip's HFTokenizer (SigLIP, SigLIP 2, XLM-R, mT5, NLLB, BERT,
  xlm-v) cleans with that clean function (fastclip.families.text.CLEANERS) and then runs the transformers
  fast tokenizer, whose own tokenizer.json (normalizer, pre-tokenizer, model, post-processor) the export
  copied: it stays on as written.
* "none": the text goes to tokenizer.json untouched, as transformers' tokenizers feed it.

The manifest's family rules follow: padding to the batch's longest text (`dynamic_length`) or to the full
context, on the tokenizer's `padding_side`; open_clip's `strip_sep_token` (the separator id becomes 0, CLIPA);
and for NLLB the source-language token of the post-processor's template, switched by `language=`.

Truncation keeps the end token last, as both references do: open_clip cuts ``[sot] + ids + [eot]`` to
`context_length` and writes `eot` into the last slot; transformers (tokenizers' truncation) keeps
``context_length`` minus the template's special tokens between them. These are the same sequence.

Bounded cost. Only the first ``context_length - 2`` tokens are kept, so a truncated text is tokenized
from a prefix ("head") of about `HEAD_CHARS` non-blank characters, cut at ASCII whitespace, and grown
(x4) while it gives too few tokens. This is exact, not an approximation, because in both pipelines a
token never spans ASCII whitespace: the CLIP pre-tokenizer regex matches no whitespace, the
normalizers (NFC, whitespace collapse, lowercase) and open_clip's cleaning (ftfy per line,
html.unescape whose entity names stop at whitespace, whitespace collapse, str.lower whose final sigma
looks only at the next character, here whitespace or the end) act within whitespace-separated words;
for other tokenizers the same holds when no token of the vocabulary joins two words (a "▁", "Ġ" or space after
another character: SentencePiece and byte-level vocabularies trained word by word), checked at load
(`_word_local`); a tokenizer that fails the check reads heads of up to 256 K characters instead.
So the head's tokens are the first tokens of the whole text, and once the head overflows the context
the truncated ids are the whole text's. Whitespace runs longer than `_FLOOD` characters are shortened
(they only separate words; a run that holds newlines keeps one, for ftfy's per-line processing).
Remaining edge cases, all bounded and documented in the README: ftfy decides mojibake repairs per
line, so a repair that depends on text of the same line beyond the head can differ (open_clip itself
cuts lines at 1 M characters); a single "word" longer than `_MAX_WORD` characters is cut inside; and
more than `_MAX_HEAD` characters of content that yields no tokens (e.g. control characters ftfy
deletes) stop the growth there. Measured: 10 MB text 6.2 s / 1.25 GB before, now the cost of its head.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import ModelError, TextError, first_line
from .families.text import CLEANERS
from .manifest import TextSpec

__all__ = ["TextTokenizer", "HEAD_CHARS"]

# First head: 40 non-blank characters per context token (77 -> ~3 K characters, ~1-2 ms to clean and
# tokenize); CLIP's BPE averages 3-5 characters per token on prose, so one head nearly always suffices.
HEAD_CHARS_PER_TOKEN = 40
HEAD_CHARS = 77 * HEAD_CHARS_PER_TOKEN
_MAX_HEAD = 1 << 16  # growth stops here (see module doc): ~40 ms of cleaning + tokenizing at worst
_MAX_WORD = 1 << 12  # a "word" (no ASCII whitespace) longer than this is cut inside
_FLOOD = 64
# ASCII whitespace: whitespace to Python's str.split, to the tokenizers' regex \s and to CLIP's split.
# A "word" match stops after _MAX_WORD characters, so no scan runs unbounded inside one giant word.
_WORD = re.compile(r"[^ \t\n\r\x0b\x0c]{1,%d}" % _MAX_WORD)  # noqa: UP031 - braces of the regex


def _shorten(text: str, start: int, end: int) -> str:
    # ftfy splits lines at "\n": keep one line end when the run has any, so the words around the run
    # stay on different lines; the whitespace-only lines between collapse to nothing in the cleaning.
    first = text.find("\n", start, end)
    if first < 0:
        return text[start : start + _FLOOD]
    last = text.rfind("\n", start, end)
    return text[start : min(first, start + _FLOOD)] + "\n" + text[max(last + 1, end - _FLOOD) : end]


def text_head(text: str, budget: int) -> tuple[str, bool]:
    """(head, complete): the start of `text` up to `budget` non-blank characters (or all of it), ending
    on a word (ASCII whitespace after it), long whitespace runs shortened. complete: nothing but
    whitespace follows the head.

    Python work on ~budget characters plus C-speed scanning of the whitespace it skips.
    """
    if len(text) <= budget:
        return text, True
    pieces: list[str] = []
    taken = previous = 0
    for m in _WORD.finditer(text):
        start, end = m.span()
        gap = text[previous:start] if start - previous <= _FLOOD else _shorten(text, previous, start)
        pieces += (gap, m.group())
        previous = end
        taken += end - start
        if taken >= budget:
            break
    else:
        return "".join(pieces), True  # trailing whitespace gives no tokens
    return "".join(pieces), _WORD.search(text, previous) is None



class TextTokenizer:
    """texts -> int64 (B, L) token ids, padded with the manifest's pad id.

    L is the longest sequence of the batch when the graph takes dynamic lengths (`spec.dynamic_length`),
    else `spec.context_length`.
    """

    def __init__(self, tokenizer_json: str | Path, spec: TextSpec, language: str | None = None):
        self.spec = spec
        self.context_length = spec.context_length
        path = Path(tokenizer_json)
        self._path = path
        try:
            text = path.read_text(encoding="utf-8")
            # Parsed here only where the file itself decides something (CLIP's own file needs no look: ~0.1 s
            # saved per load on its 49 K tokens; xlm-v's 900 K-token file takes ~1 s to parse and scan).
            data = json.loads(text) if spec.cleaning != "open_clip" or spec.languages else {}
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelError(f"{path}: cannot load tokenizer ({type(exc).__name__}: {first_line(exc)})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: cannot load tokenizer (a tokenizer.json is a JSON object)")
        self.language = check_language(spec, language, str(path))
        if self.language != spec.language:
            text = json.dumps(_with_language(data, spec.language, self.language, path))
        self._json = text
        try:
            tok = Tokenizer.from_str(self._json)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - tokenizers' Exception or panic
            first = first_line(exc)
            raise ModelError(f"{path}: cannot load tokenizer ({type(exc).__name__}: {first})") from None
        vocab = tok.get_vocab_size(with_added_tokens=True)
        for what in ("bos_token_id", "eos_token_id", "pad_token_id", "strip_sep_token_id"):
            value = getattr(spec, what)
            if value is not None and not 0 <= value < vocab:
                raise ModelError(f"{path}: the manifest's {what} {value} is outside the tokenizer's "
                                 f"vocabulary of {vocab} tokens")
        cleaner = CLEANERS[spec.cleaning]
        self._clean = cleaner.clean
        self._keep_normalizer = cleaner.keep_normalizer
        if not cleaner.keep_normalizer:
            tok.normalizer = None  # see module doc: Python already did all of open_clip's cleaning
        # Heads are exact only when no token can span ASCII whitespace (module doc); others read more.
        self._word_local = spec.cleaning == "open_clip" or _word_local(data)
        tok.no_padding()
        tok.enable_truncation(max_length=spec.context_length, stride=0, strategy="longest_first", direction="right")
        pad_token = tok.id_to_token(spec.pad_token_id) or ""
        tok.enable_padding(
            direction=spec.padding_side,
            pad_id=spec.pad_token_id,
            pad_token=pad_token,
            length=None if spec.dynamic_length else spec.context_length,
        )
        self._tok = tok
        self._counter: Tokenizer | None = None  # untruncated twin, built when a too-long text is reported
        # A tokenizer.json can parse and still fail on the first text: found by fuzzing, a Replace
        # normalizer with an empty regex makes `tokenizers` panic inside encode. Try one text at load.
        self._run(tok.encode, "A photo of 2 dogs, naïve café 北京!", add_special_tokens=True)

    def _run(self, fn, *args, **kwargs):
        """Call the tokenizers library; a failure there is the tokenizer file's fault: ModelError.

        `tokenizers` reports a Rust panic as pyo3's PanicException, a BaseException that `except
        Exception` misses and that would end a bulk job with a traceback; it is caught here.
        """
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - see docstring
            first = first_line(exc)
            raise ModelError(f"{self._path}: the tokenizer failed ({type(exc).__name__}: {first}); "
                             "the tokenizer.json is malformed") from None

    def _prepare(self, text: str, index: int, budget: int) -> tuple[str, bool]:
        """(what the tokenizer gets, complete): the cleaned head of `text` (see module doc)."""
        head, complete = text_head(text, budget)
        if self._clean is not None:
            head = self._clean(head)
        _check_unicode(head, index)
        return head, complete

    def _encode(self, texts: Sequence[str], start_index: int, truncate: bool):
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of strings, not a single str; wrap it in a list")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text #{start_index + i}: expected str, got {type(t).__module__}.{type(t).__qualname__}")
        if not texts:
            return []
        budget = HEAD_CHARS_PER_TOKEN * self.context_length if self._word_local else _MAX_HEAD * 4
        prepared = [self._prepare(t, start_index + i, budget) for i, t in enumerate(texts)]
        heads = [head for head, _ in prepared]
        encodings = self._run(self._tok.encode_batch, heads, add_special_tokens=True)
        for i, enc in enumerate(encodings):
            complete, grown = prepared[i][1], budget
            # Too few tokens from an incomplete head: the rest of the text may hold more. Grow it.
            while self._word_local and not complete and not enc.overflowing and grown < _MAX_HEAD:
                grown = min(4 * grown, _MAX_HEAD)
                heads[i], complete = self._prepare(texts[i], start_index + i, grown)
                enc = encodings[i] = self._run(self._tok.encode, heads[i], add_special_tokens=True)
            if not truncate and enc.overflowing:
                n = self._count(heads[i])
                # The head's count is exact when it is the whole text, else a lower bound: counting every
                # token of a 10 MB text would cost what truncation saves.
                count = f"{n} tokens" if complete else f"more than {n} tokens"
                raise TextError(
                    start_index + i,
                    f"{count} (with start and end tokens) exceed the context length "
                    f"{self.context_length}; shorten the text or pass truncate=True",
                )
        return encodings

    def encode_batch(self, texts: Sequence[str], *, start_index: int = 0, truncate: bool = True) -> np.ndarray:
        """int64 (B, L) ids. `start_index` offsets the indices named in errors (position in the stream)."""
        return self.encode_batch_with_mask(texts, start_index=start_index, truncate=truncate)[0]

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
        if self.spec.strip_sep_token_id is not None:
            # open_clip's strip_sep_token: the separator becomes id 0; the mask keeps it (open_clip's towers
            # derive their own from the ids, and bucketing only needs where the real tokens end).
            ids[ids == self.spec.strip_sep_token_id] = 0
        return ids, mask

    def count_tokens(self, text: str) -> int:
        """Token count of the whole `text` before truncation, start and end tokens included.

        Costs what tokenizing all of `text` costs (linear in its length).
        """
        if self._clean is not None:
            text = self._clean(text)
        return self._count(text)

    def _count(self, prepared: str) -> int:
        if self._counter is None:
            counter = self._run(Tokenizer.from_str, self._json)
            if not self._keep_normalizer:
                counter.normalizer = None
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        return len(self._run(self._counter.encode, prepared, add_special_tokens=True).ids)


def _check_unicode(text: str, index: int) -> None:
    """A lone surrogate (half of a UTF-16 pair, e.g. from bytes decoded with errors="surrogateescape")
    is not valid Unicode and cannot be encoded as UTF-8.

    References: transformers' CLIPTokenizerFast (and the `tokenizers` library under it) raise a bare
    TypeError ("TextEncodeInput must be ...") without saying which text; open_clip's cleaning runs
    ftfy, which turns a lone surrogate into U+FFFD (and a valid pair into its character), so
    "open_clip"-cleaned texts never reach this check with one and keep open_clip's ids.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise TextError(
            index,
            f"contains a lone surrogate U+{ord(bad):04X} at character {exc.start}, which is not valid Unicode "
            "(typically bytes decoded with errors='surrogateescape'); fix the text, e.g. "
            "text.encode('utf-8', 'replace').decode('utf-8'), or decode its source with errors='replace'",
        ) from None


def check_language(spec: TextSpec, language: str | None, where: str) -> str | None:
    """The source language to tokenize with: `language`, else the manifest's default; ValueError when
    the model takes none or does not know it."""
    if language is None:
        return spec.language
    if not spec.languages:
        raise ValueError(f"{where}: language={language!r} given, but this model's tokenizer takes no source language")
    if language not in spec.languages:
        import difflib

        close = difflib.get_close_matches(language, spec.languages, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else f"; e.g. {', '.join(spec.languages[:5])}"
        raise ValueError(f"{where}: unknown language {language!r} ({len(spec.languages)} codes known{hint})")
    return language


def _with_language(data: dict, default: str | None, chosen: str, path: Path) -> dict:
    """tokenizer.json `data` with the post-processor's special token `default` replaced by `chosen`: the
    way transformers' NLLB tokenizer re-templates itself in `set_src_lang_special_tokens`."""
    added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    model = data.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    chosen_id = added.get(chosen, vocab.get(chosen) if isinstance(vocab, dict) else None)
    if not isinstance(chosen_id, int):
        raise ModelError(f"{path}: language {chosen!r} is listed in the manifest but not a token of the tokenizer")
    found = False

    def template(proc) -> None:
        nonlocal found
        if not isinstance(proc, dict):
            return
        if proc.get("type") == "Sequence":
            for inner in proc.get("processors") or []:
                template(inner)
            return
        if proc.get("type") != "TemplateProcessing" or not isinstance(proc.get("special_tokens"), dict) \
                or default not in proc["special_tokens"]:
            return
        found = True
        for side in ("single", "pair"):
            for piece in proc.get(side) or []:
                special = piece.get("SpecialToken") if isinstance(piece, dict) else None
                if isinstance(special, dict) and special.get("id") == default:
                    special["id"] = chosen
        specials = proc["special_tokens"]
        del specials[default]
        specials[chosen] = {"id": chosen, "ids": [int(chosen_id)], "tokens": [chosen]}

    data = json.loads(json.dumps(data))
    if isinstance(data.get("post_processor"), dict):
        template(data["post_processor"])
    if not found:
        raise ModelError(f"{path}: the tokenizer's post-processor does not place the language token "
                         f"{default!r}; cannot switch it to {chosen!r}")
    return data


# A token that holds a whitespace marker after another character joins two words: "▁" (SentencePiece),
# "Ġ" (byte-level BPE), " " (raw).
_SPANS_WORDS = re.compile("[^ \u2581\u0120][ \u2581\u0120]")


def _word_local(data: dict) -> bool:
    """True when no token of the tokenizer's model spans two whitespace-separated words, so that a text's
    first tokens only depend on its first words (module doc)."""
    model = data.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):
        pieces = vocab.keys()
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        pieces = (p[0] for p in vocab if isinstance(p, list) and p and isinstance(p[0], str))
    else:
        return False
    return not any(_SPANS_WORDS.search(p) for p in pieces if isinstance(p, str))

"""open_clip's tokenizer for one architecture and how the runtime reproduces it (`TokenizerPlan`): the
manifest's text fields, the reference tokenize call and the writer of text/tokenizer.json & co."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fastclip import hub
from fastclip.errors import ExportError, first_line

from .open_clip_config import text_cfg
from .torchvision_compat import import_open_clip

CLIP_VOCAB = 49408
# The way out when a text tower's hub files cannot be had: the image tower is built without them.
VISION_ONLY = "export the image tower alone with --vision-only (towers=('vision',)), which needs nothing from the hub"


@dataclass
class TokenizerPlan:
    """How the runtime reproduces open_clip's tokenizer for one model: the manifest's text fields, the
    reference call and the writer of text/tokenizer.json & co."""

    tokenize: Callable[[list[str]], torch.Tensor]
    write: Callable[[Path], None]
    context_length: int
    cleaning: str
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    padding_side: str = "right"
    strip_sep_token_id: int | None = None
    language: str | None = None
    languages: tuple[str, ...] = ()

    def source_fields(self) -> dict:
        """The `Source` fields this plan fills (its text side, but for the tower's own pooling and padding)."""
        return dict(context_length=self.context_length, cleaning=self.cleaning, bos_token_id=self.bos_token_id,
                    eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, tokenize=self.tokenize,
                    write_tokenizer=self.write, padding_side=self.padding_side,
                    strip_sep_token_id=self.strip_sep_token_id, language=self.language, languages=self.languages)


# open_clip's clean functions (tokenizer.get_clean_fn) -> the runtime's cleaners (fastclip.families.text).
_CLEAN_NAMES = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}


def text_tokenizer(arch: str) -> TokenizerPlan:
    """open_clip's tokenizer for `arch` and how the runtime reproduces it: the CLIP BPE SimpleTokenizer
    (rebuilt as tokenizer.json, "open_clip" cleaning) or an HFTokenizer (its transformers fast tokenizer's
    own tokenizer.json, open_clip's clean function, strip_sep_token, the NLLB source language)."""
    open_clip = import_open_clip()
    name = text_cfg(arch).get("hf_tokenizer_name")
    offline = hub.go_offline_if_unreachable() if name else None  # transformers fetches it: fail fast offline
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:  # transformers / huggingface_hub: offline, not cached, no such repo
        if offline is not None:
            raise ExportError(hub.not_cached(f"open_clip:{arch}: the tokenizer {name!r}", offline,
                                             f"run the export where the hub is reachable once, or {VISION_ONLY}")) from None
        raise ExportError(f"open_clip:{arch}: could not get the tokenizer {name or arch!r}: "
                          f"{first_line(exc)[:200]} ({VISION_ONLY})") from None
    if isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        if tokenizer.vocab_size != CLIP_VOCAB or tokenizer.clean_fn.__name__ != "_clean_lower" \
                or tokenizer.reduction_fn is not None:
            raise ExportError(f"open_clip:{arch} uses a SimpleTokenizer variant; only open_clip's CLIP BPE tokenizer "
                              "with lower-case cleaning is supported")
        context_length = int(tokenizer.context_length)

        def write_clip(out_dir: Path) -> None:
            from .tokenizer_files import write_open_clip_tokenizer

            write_open_clip_tokenizer(out_dir, context_length)

        return TokenizerPlan(
            tokenize=lambda texts: tokenizer(texts).long(), write=write_clip, context_length=context_length,
            cleaning="open_clip", bos_token_id=int(tokenizer.sot_token_id), eos_token_id=int(tokenizer.eot_token_id),
            pad_token_id=0,  # open_clip pads with zeros; argmax pooling finds the end token anyway
        )
    if not isinstance(tokenizer, open_clip.tokenizer.HFTokenizer) or tokenizer.tokenizer_mode:
        raise ExportError(f"open_clip:{arch} uses a {type(tokenizer).__name__} tokenizer; fastclip reproduces "
                          "open_clip's CLIP BPE tokenizer and its HFTokenizer (standard mode)")
    hf = tokenizer.tokenizer
    if getattr(hf, "backend_tokenizer", None) is None:
        raise ExportError(f"open_clip:{arch}: the Hugging Face tokenizer {type(hf).__name__} has no tokenizer.json "
                          "(not a fast tokenizer); fastclip runs tokenizer.json only")
    cleaning = _CLEAN_NAMES.get(tokenizer.clean_fn.__name__)
    if cleaning is None:
        raise ExportError(f"open_clip:{arch}: text cleaning {tokenizer.clean_fn.__name__} is not reproduced")
    languages: tuple[str, ...] = ()
    language = None
    if hasattr(tokenizer, "set_lang_fn"):
        language = str(hf.src_lang)
        codes = getattr(hf, "additional_special_tokens", None) or getattr(hf, "extra_special_tokens", None) or []
        vocab = hf.get_vocab()
        languages = tuple(str(c) for c in codes if isinstance(c, str) and c in vocab)
        if language not in languages:
            raise ExportError(f"open_clip:{arch}: the tokenizer's source language {language!r} is not among its "
                              "special tokens")
    special = {name: getattr(hf, f"{name}_token_id", None) for name in ("bos", "cls", "eos", "sep", "pad")}
    if special["eos"] is None and special["sep"] is None or special["pad"] is None:
        raise ExportError(f"open_clip:{arch}: the tokenizer has no end/separator or no pad token")

    def write_hf(out_dir: Path) -> None:
        from .tokenizer_files import write_hf_tokenizer

        write_hf_tokenizer(out_dir, hf, int(tokenizer.context_length))

    first = next((v for v in (special["bos"], special["cls"], special["pad"]) if v is not None))
    return TokenizerPlan(
        tokenize=lambda texts: tokenizer(texts).long(), write=write_hf, context_length=int(tokenizer.context_length),
        cleaning=cleaning,
        bos_token_id=int(first),  # T5 has no start token: the manifest's start id then only seeds the load probe
        eos_token_id=int(special["eos"] if special["eos"] is not None else special["sep"]),
        pad_token_id=int(special["pad"]),
        padding_side=str(hf.padding_side),
        strip_sep_token_id=int(special["sep"]) if tokenizer.strip_sep_token and special["sep"] is not None else None,
        language=language, languages=languages,
    )

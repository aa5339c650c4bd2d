"""Write open_clip's CLIP tokenizer as Hugging Face files (tokenizer.json + configs). Torch-free.

open_clip tokenizes with its own Python SimpleTokenizer over `bpe_simple_vocab_16e6.txt.gz`. The runtime
uses the `tokenizers` library instead, so the export writes a `tokenizer.json` rebuilt from that same
file, the way SimpleTokenizer builds its tables:

* merges: lines 1 .. 49152-256-2 of the file (line 0 is a version header);
* vocab: the 256 byte-level characters (GPT-2's bytes_to_unicode order), the same with "</w>", one
  token per merge, then the special tokens "<start_of_text>" (49406) and "<end_of_text>" (49407).
  Those are open_clip's spellings; OpenAI's and transformers' files say "<|startoftext|>". Keeping
  open_clip's matters: a literal "<|endoftext|>" inside a caption is ordinary text to open_clip;
* pre-tokenizer: open_clip's regex (case-insensitive, as open_clip compiles it) with the gaps (spaces)
  removed, then byte-level mapping with no further splitting;
* model: BPE with end-of-word suffix "</w>", no continuing-subword prefix;
* post-processor: "<start_of_text> $A <end_of_text>"; tokenizer.json pads with id 0 ("!"), which is
  what open_clip pads with (torch.zeros); tokenizer_config.json names "<end_of_text>" as transformers'
  pad token (see write_open_clip_tokenizer). Truncation keeps the end token last, as open_clip does.

The normalizer (NFC, collapse whitespace, lowercase) approximates open_clip's cleaning for readers that
only have tokenizer.json (fastembed, transformers). fastclip's runtime instead reproduces open_clip's
cleaning exactly (ftfy, html.unescape, str.lower) in Python and switches this normalizer off.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from fastclip.hints import install_hint

BOS = "<start_of_text>"
EOS = "<end_of_text>"
PAD = "!"  # vocab id 0: open_clip pads its (B, 77) tensor with zeros
# open_clip.tokenizer.SimpleTokenizer.pat, without the special tokens' alternation being special-cased:
# `tokenizers` extracts added tokens before pre-tokenizing, the regex keeps them whole like open_clip's.
SPLIT_PATTERN = (
    r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def default_bpe_path() -> Path:
    """open_clip's bundled vocab, located without importing open_clip (whose import pulls in torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"open_clip is not installed ({install_hint('export')})")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: open_clip's BPE vocabulary is missing")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (order defines the first 256 ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def read_open_clip_bpe(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab token -> id, merges in rank order), built exactly as SimpleTokenizer.__init__ does."""
    path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}  # dict(zip(vocab, range(...))): a repeat keeps the last id
    if len(vocab) != len(tokens):
        raise ValueError(f"{path}: repeated tokens in the BPE vocabulary; not open_clip's file?")
    return vocab, [(a, b) for a, b in merges]


def build_open_clip_tokenizer(context_length: int = 77, bpe_path: str | Path | None = None):
    """A `tokenizers.Tokenizer` equal to open_clip's SimpleTokenizer once text is cleaned as open_clip does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = read_open_clip_bpe(bpe_path)
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=EOS,  # never used: every byte has a token; transformers' CLIP files do the same
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            # Bytes -> characters only: the split above already made open_clip's pieces.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # "</w>" -> space per token, then characters -> bytes.
    tok.decoder = decoders.Sequence([decoders.BPEDecoder(suffix="</w>"), decoders.ByteLevel()])
    tok.add_special_tokens(
        [
            AddedToken(BOS, single_word=False, lstrip=False, rstrip=False, normalized=True, special=True),
            AddedToken(EOS, single_word=False, lstrip=False, rstrip=False, normalized=True, special=True),
        ]
    )
    bos_id, eos_id = vocab[BOS], vocab[EOS]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
        special_tokens=[(BOS, bos_id), (EOS, eos_id)],
    )
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(pad_id=vocab[PAD], pad_token=PAD)
    return tok


def write_open_clip_tokenizer(out_dir: Path, context_length: int, bpe_path: str | Path | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_open_clip_tokenizer(context_length, bpe_path)
    tok.save(str(out_dir / "tokenizer.json"))
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)

    def added(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False, "special": True}

    config = {
        # The generic fast tokenizer loads tokenizer.json as written. transformers' "CLIPTokenizer"
        # would rebuild the pipeline with its own regex, which spells the special tokens "<|...|>".
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        # Not "!": transformers registers its pad token as a *special* token, and "!" would then be cut
        # out of every text ("!!" -> two pads instead of one BPE token). transformers therefore pads with
        # the end token (as OpenAI's CLIP files do); harmless for a causal text tower, whose end-token
        # output never sees later positions. tokenizer.json's own padding (read by fastembed and the
        # `tokenizers` library) stays open_clip's id 0.
        "pad_token": EOS,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "added_tokens_decoder": {str(bos_id): added(BOS), str(eos_id): added(EOS)},
        "fastclip_note": (
            "open_clip tokenization. Exact parity also needs open_clip's text cleaning before this tokenizer: "
            "ftfy.fix_text, html.unescape twice, strip, collapse whitespace, lowercase (fastclip does it)."
        ),
    }
    # No pad token here either: fastembed registers every token of this map as a special token, and
    # reads the pad token and id from tokenizer.json's padding section ("!", 0), as open_clip pads.
    special = {
        "bos_token": {"content": BOS, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
        "eos_token": {"content": EOS, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
        "unk_token": {"content": EOS, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def write_hf_tokenizer(out_dir: Path, hf_tokenizer, context_length: int) -> None:
    """Write a transformers fast tokenizer for the runtime: tokenizer.json is the very `tokenizers` pipeline the
    reference runs (`backend_tokenizer`, with the post-processor transformers configured: start/end tokens,
    the NLLB source language), padding and truncation left out (the manifest sets them); tokenizer_config.json
    and special_tokens_map.json come from `save_pretrained`, for other readers."""
    import shutil
    import tempfile

    from tokenizers import Tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(out_dir / "tokenizer.json"))
    with tempfile.TemporaryDirectory() as tmp:
        hf_tokenizer.save_pretrained(tmp)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (Path(tmp) / name).is_file():
                shutil.copyfile(Path(tmp) / name, out_dir / name)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    config["model_max_length"] = context_length
    config_path.write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")

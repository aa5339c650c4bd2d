"""A pre-seeded, offline Hugging Face hub cache for the text families (issue 17, item 6).

The real tokenizers and checkpoints of SigLIP, SigLIP 2, XLM-R, mT5, NLLB, BERT (CLIPA) and xlm-v cannot be
downloaded here. This module builds tokenizers of the same kind with `tokenizers` - a Gemma-style BPE with
byte fallback, SentencePiece-style Unigrams with Metaspace (T5, XLM-R), a WordPiece (BERT), a byte-level BPE
(RoBERTa), a Metaspace BPE with language codes (NLLB) - trained on a small multilingual corpus, wraps each
in the transformers class the real repo names and `save_pretrained`s it; tiny transformers configs stand in
for the text models open_clip's HF towers fetch by id. Everything is laid out as huggingface_hub caches a
repo (models--ORG--NAME/refs/main + snapshots/REV/...) under the real repo ids, so open_clip, transformers
and `fastclip export` find them with HF_HUB_OFFLINE=1 exactly as they would find the real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SENTENCES_FILE = Path(__file__).parent.parent / "fixtures" / "multilingual_sentences.json"


def sentences() -> list[str]:
    return json.loads(SENTENCES_FILE.read_text(encoding="utf-8"))


def _corpus() -> list[str]:
    # Training text: the sentence set plus English filler, so that common words merge and rare scripts fall
    # back to bytes / unknown pieces, as with real vocabularies on rare text.
    words = ("a photo of the cat dog on in with and table window sunny coffee rocket space suit tissue "
             "image picture blurry white black two cups wooden quick brown fox jumps over lazy").split()
    filler = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    return sentences() * 3 + filler * 20


LANGUAGES = ("eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans", "arb_Arab")


def gemma_bpe(add_bos: bool, add_eos: bool, lowercase: bool = False):
    """Gemma's kind: BPE with byte fallback (<0x00>..<0xFF>), "▁" for spaces, no pre-tokenizer at run time;
    ids <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Trained word by word (SentencePiece splits at whitespace while training), run with no pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, limit_alphabet=60, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    tok.pre_tokenizer = None
    if lowercase:
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    single = " ".join((["<bos>"] if add_bos else []) + ["$A"] + (["<eos>"] if add_eos else []))
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<bos>", 2), ("<eos>", 1)])
    return tok


def unigram(specials: list[str], template: str, vocab_size: int = 600, mask: str | None = None):
    """SentencePiece Unigram's kind (T5, mT5, XLM-R, xlm-v): NFKC + collapsed spaces, Metaspace "▁" prepended
    to every word, the template's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    unk = "<unk>"
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk,
                                      show_progress=False, max_piece_length=8)
    tok.train_from_iterator(_corpus(), trainer)
    if mask:
        tok.add_special_tokens([mask])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    names = [p for p in template.split() if p != "$A"]
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(n, tok.token_to_id(n)) for n in dict.fromkeys(names)])
    return tok


def wordpiece():
    """BERT's kind (bert-base-uncased for CLIPA): lower-casing BERT normalizer, WordPiece with "##"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, clean_text=True,
                                                handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials,
                                                                 limit_alphabet=80, show_progress=False))
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


def byte_level_bpe():
    """RoBERTa's kind: byte-level BPE with GPT-2's regex, <s> $A </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    return tok


def nllb_bpe():
    """NLLB's kind: Metaspace BPE, language codes as special tokens after the vocabulary, "<lang> $A </s>"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                           limit_alphabet=120, show_progress=False))
    tok.add_special_tokens(list(LANGUAGES) + ["<mask>"])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="eng_Latn $A </s>", special_tokens=[("eng_Latn", tok.token_to_id("eng_Latn")), ("</s>", 2)])
    return tok


# ------------------------------------------------------------------------------------------ hub layout

def seed_repo(hub: Path, repo_id: str, files: dict[str, Path | bytes | str]) -> Path:
    """Lay `files` (name -> source file, bytes or text) out as huggingface_hub caches repo `repo_id`:
    models--ORG--NAME/refs/main naming a revision, snapshots/REV/NAME. Returns the snapshot folder."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    return snapshot


def offline_env(home: Path) -> dict[str, str]:
    """The environment a user would set: HF_HOME with the seeded cache, no network."""
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


@contextmanager
def offline(home: Path):
    """This process reads the seeded cache, offline. huggingface_hub reads its settings at import, so its
    constants are set too (the environment alone would not reach an already-imported library)."""
    import huggingface_hub.constants as constants

    env = offline_env(home)
    saved_env = {k: os.environ.get(k) for k in env}
    saved = {k: getattr(constants, k) for k in ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    os.environ.update(env)
    constants.HF_HOME, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = env["HF_HOME"], env["HF_HUB_CACHE"], True
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for k, v in saved.items():
            setattr(constants, k, v)


def save_tokenizer(tok, class_name: str, **kwargs) -> dict[str, Path]:
    """`tok` wrapped in the transformers class the real repo names, save_pretrained: {file name: path}."""
    import tempfile

    import transformers

    folder = Path(tempfile.mkdtemp(prefix="fastclip-tok-"))
    getattr(transformers, class_name)(tokenizer_object=tok, **kwargs).save_pretrained(folder)
    return {p.name: p for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------- families

SPECIALS_XLMR = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", pad_token="<pad>",
                     unk_token="<unk>", mask_token="<mask>")
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
TINY_TEXT = {"width": 32, "heads": 2, "layers": 2}


def _tokenizers() -> dict[str, tuple]:
    """repo id -> (tokenizers.Tokenizer builder, transformers class, its keyword arguments)."""
    t5 = (lambda: unigram(["<pad>", "</s>", "<unk>"], "$A </s>"), "T5Tokenizer",
          dict(eos_token="</s>", unk_token="<unk>", extra_ids=0))
    xlmr = (lambda: unigram(["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", mask="<mask>"), "XLMRobertaTokenizer",
            SPECIALS_XLMR)
    return {
        # open_clip's SigLipTokenizer sets pad = </s> (id 1) for T5 vocabularies, <pad> (id 0) for Gemma's.
        "timm/ViT-B-16-SigLIP": (t5[0], t5[1], dict(t5[2], pad_token="</s>")),
        "timm/ViT-B-16-SigLIP2": (lambda: gemma_bpe(add_bos=False, add_eos=True), "GemmaTokenizer",
                                  dict(padding_side="right")),
        "google/mt5-base": (t5[0], t5[1], dict(t5[2], pad_token="<pad>")),
        "xlm-roberta-base": xlmr,
        "facebook/xlm-v-base": xlmr,
        "roberta-base": (byte_level_bpe, "RobertaTokenizer", SPECIALS_XLMR),
        "facebook/nllb-200-distilled-600M": (nllb_bpe, "NllbTokenizer",
                                             dict(SPECIALS_XLMR, src_lang="eng_Latn",
                                                  additional_special_tokens=list(LANGUAGES))),
        "bert-base-uncased": (wordpiece, "BertTokenizer",
                              dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                                   mask_token="[MASK]", do_lower_case=True)),
    }


def _hf_config(repo: str, vocab: int) -> dict:
    """Tiny transformers configs for the text models open_clip's HF towers build by id (and the tokenizer repos'
    config.json, which AutoTokenizer reads)."""
    from transformers import BertConfig, M2M100Config, MT5Config, RobertaConfig, XLMRobertaConfig

    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=130)
    if repo in ("xlm-roberta-base", "facebook/xlm-v-base"):
        return XLMRobertaConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2).to_dict()
    if repo == "roberta-base":
        return RobertaConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2).to_dict()
    if repo == "bert-base-uncased":
        return BertConfig(**common, pad_token_id=0).to_dict()
    if repo == "google/mt5-base":
        return MT5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=1,
                         num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0).to_dict()
    if repo == "facebook/nllb-200-distilled-600M":
        return M2M100Config(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, decoder_start_token_id=2).to_dict()
    raise ValueError(f"no tiny transformers config for {repo}")


# name -> (real open_clip architecture, pretrained tag or None (no tag: a checkpoint file), what it covers)
FAMILIES = {
    "siglip": ("ViT-B-16-SigLIP", "webli", "T5 Unigram, canonicalize, bidirectional, last-token pooling"),
    "siglip2": ("ViT-B-16-SigLIP2", "webli", "Gemma BPE + byte fallback, canonicalize, last-token pooling"),
    "mobileclip2": ("MobileCLIP2-S0", "dfndr2b", "CLIP BPE, bidirectional tower, argmax pooling"),
    "clipa": ("ViT-H-14-CLIPA", "datacomp1b", "BERT WordPiece, strip_sep_token, bidirectional, last pooling"),
    "xlm-roberta": ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", "XLM-R Unigram, HF tower, mean pooling"),
    "roberta": ("roberta-ViT-B-32", "laion2b_s12b_b32k", "byte-level BPE, HF tower, mean pooling"),
    "mt5": ("mt5-base-ViT-B-32", None, "mT5 Unigram, HF T5 encoder, mean pooling"),
    "nllb": ("nllb-clip-base", "v1", "NLLB BPE + source language, HF M2M100 encoder, cls pooling"),
    "xlm-v": ("ViT-H-14-worldwide", "metaclip2_worldwide", "xlm-v Unigram, causal open_clip tower, eos pooling"),
    "mt5-worldwide": ("ViT-L-14-worldwide", None, "mT5 Unigram, canonicalize, causal tower, eos pooling"),
}


def tiny_config(arch: str, vocab: int) -> dict:
    """open_clip's config for `arch`, shrunk: a tiny ViT vision tower, a 2-layer text tower of `vocab` tokens."""
    from fastclip_export.torchvision_compat import import_open_clip

    cfg = json.loads(json.dumps(import_open_clip().get_model_config(arch)))
    cfg["embed_dim"] = 16
    cfg["vision_cfg"] = dict(TINY_VISION)
    text = cfg["text_cfg"]
    if not text.get("hf_model_name"):
        text.update(TINY_TEXT, vocab_size=vocab)
    cfg.pop("quick_gelu", None)
    return cfg


@dataclass
class TextHub:
    home: Path  # HF_HOME
    configs: dict  # family -> tiny open_clip config JSON (file stem = the real architecture)
    pretrained: dict  # family -> the tag (hub-cached checkpoint) or a checkpoint file, as --pretrained takes it


def build(root: Path, families=None) -> TextHub:
    """Seed root/hf-home with every tokenizer repo, tiny HF text configs and, per family, a random-weight tiny
    checkpoint under its tag's hub repo (or in a file where the architecture has no tag, or where this
    branch's export refuses the tag's image preprocessing)."""
    import torch
    from safetensors.torch import save_file

    from fastclip_export.open_clip_config import config_problem
    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    from open_clip.pretrained import get_pretrained_cfg

    home = root / "hf-home"
    hub = home / "hub"
    vocab = {}
    for repo, (builder, cls, kwargs) in _tokenizers().items():
        tok = builder()
        vocab[repo] = tok.get_vocab_size(with_added_tokens=True)
        files = dict(save_tokenizer(tok, cls, **kwargs))
        # timm's repos carry timm's own config.json (no transformers model_type); AutoTokenizer then goes by
        # tokenizer_config.json alone, as with the real files.
        files["config.json"] = json.dumps({"architecture": "vit_base_patch16_siglip_224", "num_classes": 0}
                                          if repo.startswith("timm/") else _hf_config(repo, vocab[repo]))
        seed_repo(hub, repo, files)
    configs, pretrained = {}, {}
    (root / "configs").mkdir(exist_ok=True)
    with offline(home):
        for name in families or FAMILIES:
            arch, tag, _ = FAMILIES[name]
            text = open_clip.get_model_config(arch)["text_cfg"]
            repo = text.get("hf_tokenizer_name") or text.get("hf_model_name")
            cfg = tiny_config(arch, vocab.get(repo, 49408))
            path = root / "configs" / f"{arch}.json"
            path.write_text(json.dumps(cfg))
            configs[name] = path
            open_clip.add_model_config(path)
            torch.manual_seed(0)
            model = open_clip.create_model(arch, pretrained=None, pretrained_text=False)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if tag is not None and config_problem(arch, tag) is None:
                repo_id = get_pretrained_cfg(arch, tag)["hf_hub"].rstrip("/")
                snapshot = seed_repo(hub, repo_id, {})
                save_file(state, str(snapshot / "open_clip_model.safetensors"))
                pretrained[name] = tag
            else:
                file = root / f"{name}.safetensors"
                save_file(state, str(file))
                pretrained[name] = str(file)
    return TextHub(home, configs, pretrained)

"""Fuzzing harness: decoders, the manifest loader and the tokenizer.json loader, with fixed seeds.

Every case must end in a result (pixels, a Manifest, token ids, a vector) or a fastclip error
(ImageError / ModelError / TextError); anything else (another exception type, a hang past the per-case
alarm, a crash of the process) is a finding. benchmarks/fuzz_chunk.py runs one slice of cases of one kind
and prints one JSON line per finding and a summary line; tests/test_fuzz.py runs a bounded share in a
subprocess, benchmarks/fuzz.py the long run (crash-isolated, in chunks); both through
benchmarks/fuzz_chunk.py, which runs one slice:

    python benchmarks/fuzz_chunk.py --kind image-truncate --start 0 --stop 500 --seed 0 [--model DIR]

Kinds: image-truncate (every offset of small JPEG/PNG/GIF/WebP/BMP/TIFF files), image-mutate (random
byte edits, mostly in headers), manifest-mutate (values and types replaced, keys dropped), manifest-
truncate (fastclip.json cut at every offset), tokenizer-truncate, tokenizer-mutate (a small
tokenizer.json, cut or edited), texts (head tokenization vs open_clip's and transformers' tokenizers,
exact ids).
"""

from __future__ import annotations

import copy
import io
import json
import re
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

TESTS = Path(__file__).resolve().parent.parent
FIXTURE = TESTS / "fixtures" / "clip-tokenizer" / "tokenizer.json"
PER_CASE_SECONDS = 20


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


# --------------------------------------------------------------------------- images


@lru_cache(maxsize=1)
def seed_files() -> dict[str, bytes]:
    """Small real-photo files in the formats worth fuzzing (a few hundred bytes to a few KB each)."""
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((40, 30), Image.Resampling.BILINEAR)
    out = {}

    def save(name, img, **kw):
        buf = io.BytesIO()
        img.save(buf, **kw)
        out[name] = buf.getvalue()

    save("jpeg", photo, format="JPEG", quality=80)
    save("jpeg-progressive", photo, format="JPEG", quality=70, progressive=True)
    save("png", photo, format="PNG")
    p = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.info["transparency"] = 2
    save("png-palette", p, format="PNG")
    save("gif", photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), format="GIF")
    save("webp", photo, format="WEBP", quality=60)
    save("webp-lossless", photo.convert("RGBA"), format="WEBP", lossless=True)
    save("bmp", photo.resize((12, 9)), format="BMP")
    save("tiff", photo.resize((12, 9)), format="TIFF")
    return out


def truncation_cases() -> list[tuple[str, int]]:
    return [(name, k) for name, blob in seed_files().items() for k in range(len(blob))]


INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]


def mutated(blob: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(blob)
    for _ in range(int(rng.integers(1, 5))):
        # Headers hold the sizes, counts and offsets decoders trust: 3 edits in 4 land in the first 64 bytes.
        span = min(64, len(data)) if rng.random() < 0.75 else len(data)
        i = int(rng.integers(span))
        op = rng.integers(4)
        if op == 0:
            data[i] = int(rng.integers(256))
        elif op == 1:
            data[i] = INTERESTING[int(rng.integers(len(INTERESTING)))]
        elif op == 2:
            data[i] ^= 1 << int(rng.integers(8))
        else:  # a 16-bit size field set to something large
            data[i : i + 2] = int(rng.integers(0x100, 0x10000)).to_bytes(2, "big")
    return bytes(data)


@lru_cache(maxsize=4)
def preprocessor(fast):
    from fastclip.images import ImagePreprocessor
    from fastclip.manifest import ImageSpec

    return ImagePreprocessor(ImageSpec(input_name="x", output_name="y", files={}, image_size=32), fast=fast)


def image_case(blob: bytes, index: int) -> str:
    from fastclip.errors import ImageError

    fast = (False, True)[index % 2]  # drafted JPEG decoding too
    try:
        pixels = preprocessor(fast)(blob, index)
    except ImageError:
        return "error"
    if pixels.shape != (3, 32, 32) or not np.isfinite(pixels).all():
        raise AssertionError(f"bad pixels {pixels.shape}")
    return "ok"


# --------------------------------------------------------------------------- manifests

HOSTILE = [None, True, 0, -1, 2**63, 1e308, float("nan"), float("inf"), "", "x", "../x", "/etc/passwd",
           "C:\\x", [], {}, [1, 2, 3], [0.5], {"a": 1}, "fp32", 3.5, "model.onnx", -(2**31)]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def mutate_manifest(manifest: dict, rng: np.random.Generator):
    data = copy.deepcopy(manifest)
    for _ in range(int(rng.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            return HOSTILE[int(rng.integers(len(HOSTILE)))]
        path = paths[int(rng.integers(len(paths)))]
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(HOSTILE[int(rng.integers(len(HOSTILE)))])
    if rng.random() < 0.03:
        return [data]
    return data


def manifest_case(model_dir: Path, data, index: int, full_load: bool) -> str:
    from fastclip.errors import ModelError
    from fastclip.manifest import parse

    try:
        parse(data, origin=f"case {index}")
    except ModelError:
        return "error"
    if not full_load:
        return "ok"
    return _load_and_embed(model_dir, data)


def _load_and_embed(model_dir: Path, data) -> str:
    """A folder with this manifest and the real files: load both towers and embed one item each."""
    import shutil

    from fastclip import ImageEmbedding, TextEmbedding
    from fastclip.errors import FastClipError

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        shutil.copytree(model_dir, folder)
        (folder / "fastclip.json").write_text(json.dumps(data))
        outcome = "ok"
        for cls, item in ((ImageEmbedding, np.zeros((20, 30, 3), np.uint8)), (TextEmbedding, "a photo of a dog")):
            try:
                vector = next(cls(folder, workers=0).embed([item]) if cls is ImageEmbedding else cls(folder).embed([item]))
                if vector is None or not np.isfinite(vector).all():
                    raise AssertionError(f"{cls.__name__}: not a finite vector")
            except FastClipError:
                outcome = "error"
        return outcome


def manifest_text_case(text: str, index: int) -> str:
    from fastclip.errors import ModelError
    from fastclip.manifest import load

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fastclip.json").write_text(text, encoding="utf-8")
        try:
            load(tmp)
        except ModelError:
            return "error"
    return "ok"


# --------------------------------------------------------------------------- tokenizer.json


@lru_cache(maxsize=1)
def small_tokenizer_json() -> str:
    """CLIP's tokenizer.json cut to its first 600 tokens and the merges among them (parses in ~1 ms)."""
    full = json.loads(FIXTURE.read_text(encoding="utf-8"))
    vocab = {t: i for t, i in full["model"]["vocab"].items() if i < 600}
    merges = []
    for m in full["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    full["model"]["vocab"] = {**vocab, "<|startoftext|>": 600, "<|endoftext|>": 601}
    full["model"]["merges"] = merges
    for t in full["added_tokens"]:
        t["id"] = 600 if "start" in t["content"] else 601
    return json.dumps(full)


def tokenizer_case(text: str, index: int) -> str:
    from fastclip.errors import ModelError, TextError
    from fastclip.manifest import TextSpec
    from fastclip.text import TextTokenizer

    spec = TextSpec(input_name="x", output_name="y", files={}, cleaning=("none", "open_clip")[index % 2],
                    bos_token_id=600, eos_token_id=601, pad_token_id=0, dynamic_length=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(text, encoding="utf-8")
        try:
            tok = TextTokenizer(path, spec)
        except ModelError:
            return "error"
        try:
            ids = tok.encode_batch(["a photo of a dog", "", "naïve café &amp; 北京 " * 40])
        except TextError:
            return "error"
    if ids.dtype != np.int64 or ids.shape[0] != 3:
        raise AssertionError(f"bad ids {ids.dtype} {ids.shape}")
    return "ok"


def texts_case(rng: np.random.Generator, index: int) -> str:
    """Head tokenization against the references' whole-text tokenization, exact ids: open_clip's tokenizer
    for open_clip cleaning, transformers' for the HF tokenizer.json (see fastclip/text.py)."""
    from test_text import CORPUS, random_long_text  # noqa: F401 - the test module's generator

    tok = _text_tokenizers()[index % 2]
    text = random_long_text(rng, int(rng.integers(3_000, 60_000)))
    if tok.spec.cleaning == "open_clip":
        # open_clip's own special-token spelling glued to punctuation is the one known difference
        # (tests/test_text.py KNOWN_OPEN_CLIP_DIFF); left out here.
        text = re.sub(r"<(start|end)_of_text>", "", text, flags=re.IGNORECASE)
    ours = tok.encode_batch([text])[0].tolist()
    want = _text_references()[index % 2](text)
    rest = ours[len(want):]
    if ours[: len(want)] != want or any(t != tok.spec.pad_token_id for t in rest):
        raise AssertionError(f"ids differ from the reference tokenizer's (text starts {text[:80]!r})")
    return "ok"


@lru_cache(maxsize=1)
def _text_references():
    """(open_clip's tokenizer, transformers' CLIPTokenizer on the fixture): text -> ids up to the end token."""
    from fastclip_export.torchvision_compat import import_open_clip
    from transformers import CLIPTokenizer

    open_clip_tok = import_open_clip().get_tokenizer("ViT-B-32")
    hf = CLIPTokenizer.from_pretrained(FIXTURE.parent)

    def open_clip_ids(text: str) -> list[int]:
        row = open_clip_tok([text])[0].tolist()
        return row[: row.index(49407) + 1]

    return open_clip_ids, lambda text: hf(text, truncation=True, max_length=77)["input_ids"]


@lru_cache(maxsize=1)
def _text_tokenizers():
    from fastclip_export.tokenizer_files import write_open_clip_tokenizer

    from fastclip.manifest import TextSpec
    from fastclip.text import TextTokenizer

    folder = Path(tempfile.mkdtemp())
    write_open_clip_tokenizer(folder, 77)
    base = {"input_name": "input_ids", "output_name": "text_embeds", "files": {}, "dynamic_length": True}
    return (TextTokenizer(folder / "tokenizer.json", TextSpec(**base, cleaning="open_clip", pad_token_id=0)),
            TextTokenizer(FIXTURE, TextSpec(**base, cleaning="none", pad_token_id=49407)))


# --------------------------------------------------------------------------- runner

KINDS = ["image-truncate", "image-mutate", "manifest-mutate", "manifest-truncate", "tokenizer-truncate",
         "tokenizer-mutate", "texts"]


def case_count(kind: str, model_dir: Path | None) -> int | None:
    """Cases of an enumerating kind (None: as many as asked)."""
    if kind == "image-truncate":
        return len(truncation_cases())
    if kind == "manifest-truncate":
        return len((model_dir / "fastclip.json").read_text(encoding="utf-8"))
    return None


def run_case(kind: str, i: int, seed: int, model_dir: Path | None, full_load_every: int) -> str:
    rng = np.random.default_rng([seed, i])
    if kind == "image-truncate":
        name, k = truncation_cases()[i]
        return image_case(seed_files()[name][:k], i)
    if kind == "image-mutate":
        names = sorted(seed_files())
        return image_case(mutated(seed_files()[names[i % len(names)]], rng), i)
    if kind == "manifest-mutate":
        manifest = json.loads((model_dir / "fastclip.json").read_text(encoding="utf-8"))
        full = full_load_every > 0 and i % full_load_every == 0
        return manifest_case(model_dir, mutate_manifest(manifest, rng), i, full)
    if kind == "manifest-truncate":
        return manifest_text_case((model_dir / "fastclip.json").read_text(encoding="utf-8")[:i], i)
    if kind == "tokenizer-truncate":
        text = small_tokenizer_json()
        return tokenizer_case(text[: int(rng.integers(len(text)))] if i else text, i)
    if kind == "tokenizer-mutate":
        if i % 2:  # structure: values and types replaced in the parsed JSON (model, normalizer, added tokens...)
            tree = json.loads(small_tokenizer_json())
            part = ["model", "normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens"][i // 2 % 6]
            tree[part] = mutate_manifest({"x": tree[part]}, rng)
            if isinstance(tree[part], dict) and "x" in tree[part]:
                tree[part] = tree[part]["x"]
            return tokenizer_case(json.dumps(tree), i)
        blob = mutated(small_tokenizer_json().encode(), rng)
        return tokenizer_case(blob.decode("utf-8", "replace"), i)
    if kind == "texts":
        return texts_case(rng, i)
    raise ValueError(kind)

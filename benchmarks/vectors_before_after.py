"""Same vectors before and after a restructuring: the runtime of git revision REV against this checkout's, on
the same model folders, bit for bit.

    python benchmarks/vectors_before_after.py --rev 1e24ae5 [--out benchmarks/results/vectors_before_after.txt]

The model folders are exported once, by this checkout, from tiny random-weight configs (an open_clip CLIP with
fp32 / fp16 / int8 variants, a SigLIP-style sigmoid model, a transformers CLIP): the comparison isolates the
runtime. Each tree then embeds the same real photos (odd sizes included) and sentences under several options
in its own Python process (PYTHONPATH = that tree), and every array pair is compared with np.array_equal.
Prints one line per array that differs and a summary; exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# Run inside each tree's process: writes every array it computes into OUT (npz).
EMBED = r'''
import json, sys
import numpy as np
from fastclip import CLIP, ImageEmbedding, TextEmbedding
folders, images, texts, out = json.loads(sys.argv[1])
arrays = {}
for name, spec in folders.items():
    folder, precision = spec["folder"], spec["precision"]
    for label, options in {"default": {}, "fast": {"fast": True}, "fast-max": {"fast": "max"},
                           "no-exif": {"exif_transpose": False}}.items():
        img = ImageEmbedding(folder, precision=precision, **options)
        arrays[f"{name}/image/{label}"] = np.stack(list(img.embed(images, batch_size=3)))
    img = ImageEmbedding(folder, precision=precision)
    arrays[f"{name}/image/raw"] = np.stack(list(img.embed(images, batch_size=4, normalize=False)))
    batch = img.embed_batch(images[:5])
    arrays[f"{name}/image/embed_batch"] = batch.vectors
    if spec["text"]:
        txt = TextEmbedding(folder, precision=precision)
        arrays[f"{name}/text/default"] = np.stack(list(txt.embed(texts, batch_size=5)))
        arrays[f"{name}/text/raw"] = np.stack(list(txt.embed(texts, batch_size=64, normalize=False)))
        many = texts * 40  # a large job: the bucketed, concurrent-runs path
        arrays[f"{name}/text/large"] = np.stack(list(txt.embed(many, batch_size=256)))
        clip = CLIP(folder, precision=precision)
        arrays[f"{name}/classify"] = np.asarray(clip.classify(images[:4], ["dog", "cat", "rocket", "coffee"],
                                                              template="a photo of a {}."))
np.savez(out, **arrays)
print(len(arrays))
'''


def tree_of(rev: str, into: Path) -> Path:
    """fastclip/ of `rev` (git archive), as a folder to put first on PYTHONPATH."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "fastclip"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into)
    return into


def build_models(folder: Path) -> dict[str, dict]:
    import torch
    from conftest import SEED, TINY_OPEN_CLIP_CONFIG, tiny_hf_config
    from fastclip_export.api import export_model
    from fastclip_export.torchvision_compat import import_open_clip, import_torchvision

    open_clip = import_open_clip()
    quiet = dict(log=lambda _: None)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "vba-tiny.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(SEED)
    clip = export_model("open_clip:vba-tiny", folder / "clip", pretrained="none", precisions=("fp32", "fp16", "int8"),
                        **quiet)
    sig = dict(TINY_OPEN_CLIP_CONFIG, init_logit_bias=-10.0)
    (folder / "vba-sig.json").write_text(json.dumps(sig))
    open_clip.add_model_config(folder / "vba-sig.json")
    torch.manual_seed(SEED)
    sigmoid = export_model("open_clip:vba-sig", folder / "sig", pretrained="none", **quiet)
    import_torchvision()
    from transformers import CLIPModel

    from conftest import copy_tokenizer_files

    torch.manual_seed(SEED)
    hf_src = folder / "hf-src"
    CLIPModel(tiny_hf_config()).eval().save_pretrained(hf_src)
    copy_tokenizer_files(hf_src)
    hf = export_model(str(hf_src), folder / "hf", **quiet)
    models = {f"clip-{p}": {"folder": str(clip), "precision": p, "text": True} for p in ("fp32", "fp16", "int8")}
    models["sigmoid"] = {"folder": str(sigmoid), "precision": "fp32", "text": True}
    models["hf"] = {"folder": str(hf), "precision": "fp32", "text": True}
    return models


def inputs(folder: Path) -> tuple[list[str], list[str]]:
    from PIL import Image

    from support.photos import SENTENCES, photo_array, write_photos

    paths = [str(p) for p in write_photos(folder / "photos")]
    odd = Image.fromarray(photo_array("astronaut")).resize((641, 427))  # crop offsets land on .5
    odd.save(folder / "photos" / "odd.jpg", quality=90)
    tall = Image.fromarray(photo_array("coffee")).resize((301, 997))
    tall.save(folder / "photos" / "tall.png")
    texts = [*SENTENCES, "a photo of a dog " * 30, ""]
    return [*paths, str(folder / "photos" / "odd.jpg"), str(folder / "photos" / "tall.png")], texts


def embed_with(tree: Path, models, images, texts, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", EMBED, json.dumps([models, images, texts, str(out)])], env=env,
                       cwd=tree, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"embedding with {tree} failed:\n{r.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="the git revision before the change")
    ap.add_argument("--out", type=Path, help="also write the summary here")
    args = ap.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = build_models(tmp / "models")
        images, texts = inputs(tmp)
        old = tree_of(args.rev, tmp / "old")
        embed_with(old, models, images, texts, tmp / "old.npz")
        embed_with(ROOT, models, images, texts, tmp / "new.npz")
        before, after = np.load(tmp / "old.npz"), np.load(tmp / "new.npz")
        names = sorted(set(before.files) | set(after.files))
        differ = [n for n in names if n not in before.files or n not in after.files
                  or not np.array_equal(before[n], after[n])]
        total = sum(int(np.asarray(after[n]).size) for n in after.files)
    lines = [f"# vectors_before_after.py --rev {args.rev} vs the working tree, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - started:.0f} s",
             *[f"DIFFERS {n}" for n in differ],
             f"{len(names)} arrays ({total} values) compared with np.array_equal: {len(differ)} differ"]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

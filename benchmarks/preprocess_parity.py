"""Image preprocessing: fastclip vs open_clip vs transformers' CLIP processors, and decode+preprocess speed.

Run alone: python benchmarks/preprocess_parity.py [--jpeg-mp 2.0] [--repeats 20]

Prints, per skimage photo, the max abs difference of the normalized (3, 224, 224) tensor between
open_clip's eval transform (the reference) and
  * fastclip.images.preprocess               (expected: 0),
  * transformers CLIPImageProcessor          (torchvision backend),
  * transformers CLIPImageProcessorPil       (PIL backend),
both configured from tests/fixtures/clip-tokenizer/preprocessor_config.json; then ms/img of fastclip's
exact path vs its draft (reduced JPEG decoding) path on a synthetic JPEG of about 2 megapixels.
Needs the export extras (torch, open_clip, transformers) and scikit-image.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "clip-tokenizer"
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "camera"]


def photos() -> dict[str, Image.Image]:
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in PHOTOS}


def gaps() -> list[tuple[str, str, float, float, float]]:
    from fastclip_export.torchvision_compat import import_open_clip

    import_open_clip()  # open_clip needs the CPU-torch torchvision workaround first
    from open_clip.transform import image_transform
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil

    from fastclip.images import preprocess
    from fastclip.manifest import ImageSpec

    spec = ImageSpec(input_name="pixel_values", output_name="image_embeds", files={})
    ref_t = image_transform(224, is_train=False, mean=spec.mean, std=spec.std)
    tv = CLIPImageProcessor.from_pretrained(FIXTURE)
    pil = CLIPImageProcessorPil.from_pretrained(FIXTURE)
    rows = []
    for name, img in photos().items():
        for mode in ("RGB", "L") if img.mode == "RGB" else (img.mode,):
            im = img.convert(mode)
            ref = ref_t(im).numpy()
            ours = preprocess(im, spec)
            a = np.asarray(tv(images=im, return_tensors="np")["pixel_values"][0])
            b = np.asarray(pil(images=im, return_tensors="np")["pixel_values"][0])
            rows.append((f"{name} {img.size[0]}x{img.size[1]}", mode,
                         float(np.abs(ours - ref).max()), float(np.abs(a - ref).max()), float(np.abs(b - ref).max())))
    return rows


def timing(megapixels: float, repeats: int) -> tuple[tuple[int, int], float, float]:
    from skimage import data

    from fastclip.images import ImagePreprocessor
    from fastclip.manifest import ImageSpec

    # A real photo scaled up to ~2 MP (4:3-ish), saved as a typical camera-quality JPEG.
    src = Image.fromarray(data.chelsea())
    scale = (megapixels * 1e6 / (src.size[0] * src.size[1])) ** 0.5
    big = src.resize((round(src.size[0] * scale), round(src.size[1] * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    payload = buf.getvalue()
    spec = ImageSpec(input_name="pixel_values", output_name="image_embeds", files={})
    results = []
    for fast in (False, True):
        pre = ImagePreprocessor(spec, fast=fast)
        pre(payload, 0)  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(repeats):
                pre(payload, 0)
            best = min(best, (time.perf_counter() - t0) / repeats * 1e3)
        results.append(best)
    return big.size, results[0], results[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jpeg-mp", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"Pillow {Image.__version__}")
    print(f"{'photo':28} {'mode':4} {'fastclip':>10} {'HF torchvision':>15} {'HF PIL':>10}   (max abs diff vs open_clip)")
    for photo, mode, ours, tv, pil in gaps():
        print(f"{photo:28} {mode:4} {ours:10.2e} {tv:15.4f} {pil:10.4f}")
    size, exact, draft = timing(args.jpeg_mp, args.repeats)
    print(f"\ndecode + preprocess of a {size[0]}x{size[1]} JPEG ({size[0] * size[1] / 1e6:.1f} MP), one thread:")
    print(f"  exact path  {exact:7.2f} ms/img")
    print(f"  draft path  {draft:7.2f} ms/img   ({exact / draft:.1f}x)")


if __name__ == "__main__":
    main()

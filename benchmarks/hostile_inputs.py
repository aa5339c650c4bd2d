"""Time and peak memory of one hostile input, each case in its own process (README "Hostile inputs and limits").

    python benchmarks/hostile_inputs.py [--model DIR] [--cases png-1x60000,text-10MB] [--before-full]

For each case a fresh interpreter loads the model, embeds one ordinary input (warm-up), records its RSS
("model" column), then embeds the hostile input once: wall time of that call and the process's peak RSS
(ru_maxrss) minus the warm RSS ("beyond model"). "before" rows run the code path main had before issue 13
(full resize then crop; whole-text cleaning + tokenization), emulated here with the same libraries;
the 1x60000 / 60000x1 "before" rows need ~12 GB and run only with --before-full (the issue measured
46 s / 12.3 GB and 22 s / 12.2 GB); by default a 1x12000 strip shows the old path's growth instead.
Without --model, a tiny random open_clip export is built first (the model's size does not enter the
"beyond model" column; the tiny towers keep the run short).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(tempfile.gettempdir()) / "fastclip-hostile-inputs"


def make_inputs() -> dict[str, Path]:
    """Files for the image cases (built once, cached in the temp folder)."""
    import numpy as np
    from PIL import Image

    DATA.mkdir(exist_ok=True)
    paths = {}

    def png(name, img):
        path = DATA / f"{name}.png"
        if not path.exists():
            img.save(path)
        paths[name] = path

    png("strip-1x60000", Image.new("RGB", (1, 60000), (200, 30, 90)))
    png("strip-60000x1", Image.new("RGB", (60000, 1), (200, 30, 90)))
    png("strip-1x12000", Image.new("RGB", (1, 12000), (200, 30, 90)))
    png("strip-12000x1", Image.new("RGB", (12000, 1), (200, 30, 90)))
    # Just under Pillow's MAX_IMAGE_PIXELS (89,478,485): 9459 x 9459 = 89,472,681 pixels. A smooth
    # gradient keeps the files small; decoding costs the same as for a photo of that size.
    side = 9459
    big = DATA / "big-9459.png"
    if not big.exists() or not (DATA / "big-9459.jpg").exists() or not (DATA / "big-9459-rgba.png").exists():
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        rgb = np.empty((side, side, 3), np.uint8)
        rgb[..., 0] = ramp[None, :]
        rgb[..., 1] = ramp[:, None]
        rgb[..., 2] = 128
        img = Image.fromarray(rgb)
        img.save(big, compress_level=1)
        img.save(DATA / "big-9459.jpg", quality=85)
        img.putalpha(200)
        img.save(DATA / "big-9459-rgba.png", compress_level=1)
        del img, rgb
    paths["big-png"], paths["big-jpg"], paths["big-rgba"] = big, DATA / "big-9459.jpg", DATA / "big-9459-rgba.png"
    return paths


def ten_mb_text() -> str:
    words = ["a", "photo", "of", "a", "dog", "playing", "on", "the", "beach", "with", "a", "red", "ball", "at", "sunset"]
    return " ".join(words[i % len(words)] for i in range(2_000_000))[: 10 * 1024 * 1024]


CASES = {
    # name: (kind, input, variant)
    "png-1x60000": ("image", "strip-1x60000", "after"),
    "png-60000x1": ("image", "strip-60000x1", "after"),
    "png-1x12000 before": ("image", "strip-1x12000", "before"),
    "png-1x12000": ("image", "strip-1x12000", "after"),
    "png-12000x1 before": ("image", "strip-12000x1", "before"),
    "png-12000x1": ("image", "strip-12000x1", "after"),
    "png-1x60000 before": ("image", "strip-1x60000", "before-full"),
    "png-60000x1 before": ("image", "strip-60000x1", "before-full"),
    "png 89.5 MP RGB": ("image", "big-png", "after"),
    "png 89.5 MP RGBA": ("image", "big-rgba", "after"),
    "jpeg 89.5 MP": ("image", "big-jpg", "after"),
    "jpeg 89.5 MP fast=True": ("image", "big-jpg", "fast"),
    "text 10 MB before": ("text", "10MB", "before"),
    "text 10 MB": ("text", "10MB", "after"),
    "text 10 MB whitespace flood": ("text", "flood", "after"),
    "text 10 MB truncate=False": ("text", "10MB", "strict"),
}


def _peak_rss() -> int:
    """This process's peak RSS in bytes. VmHWM belongs to the address space, which exec replaces;
    ru_maxrss survives exec on Linux and would report the parent's peak (it built the big inputs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(case: str, model: str) -> None:
    import numpy as np
    import psutil

    from fastclip import ImageEmbedding, TextEmbedding, TextError

    kind, name, variant = CASES[case]
    proc = psutil.Process()
    if kind == "image":
        emb = ImageEmbedding(model, workers=0, fast=variant == "fast")
        next(emb.embed([np.zeros((300, 400, 3), np.uint8)]))  # warm-up: sessions, lookup tables
        if variant.startswith("before"):
            from fastclip.families import resize

            resize.MAX_RESIZED_PIXELS = 1 << 62  # the old path: resize everything, then crop
        item = str(make_inputs()[name])
        base = proc.memory_info().rss
        t = time.perf_counter()
        vector = next(emb.embed([item]))
        seconds = time.perf_counter() - t
        assert vector is not None and np.isfinite(vector).all()
    else:
        emb = TextEmbedding(model)
        next(emb.embed(["a photo of a cat"]))
        text = ten_mb_text() if name == "10MB" else "a dog " * 10 + " " * (10 * 1024 * 1024) + "and a cat"
        base = proc.memory_info().rss
        t = time.perf_counter()
        if variant == "before":  # main before issue 13: clean and tokenize the whole text, then truncate
            tok = emb._tokenizer
            cleaned = tok._clean(text) if tok._clean is not None else text
            tok._tok.encode_batch([cleaned])
        elif variant == "strict":
            try:
                next(emb.embed([text], truncate=False))
            except TextError:
                pass
        else:
            next(emb.embed([text]))
        seconds = time.perf_counter() - t
    peak = _peak_rss()
    print(json.dumps({"seconds": seconds, "model_mb": base / 2**20, "peak_mb": peak / 2**20}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--cases", default="")
    parser.add_argument("--before-full", action="store_true", help="also run the ~12 GB old-path strips")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, str(args.model))
        return 0
    tmp = tempfile.TemporaryDirectory()
    if args.model is None:
        sys.path.insert(0, str(HERE))
        sys.path.insert(0, str(HERE.parent / "tests"))
        from fuzz import tiny_model

        args.model = tiny_model(Path(tmp.name))
    make_inputs()
    names = [c for c in (args.cases.split(",") if args.cases else CASES)
             if args.before_full or CASES[c][2] != "before-full"]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"model {args.model}")
    print(f"{'case':<30}{'seconds':>9}{'model MB':>10}{'peak MB':>9}{'beyond model MB':>17}")
    for name in names:
        r = subprocess.run([sys.executable, __file__, "--child", name, "--model", str(args.model)],
                           check=False, capture_output=True, text=True, env={**os.environ})
        if r.returncode != 0:
            print(f"{name:<30} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        beyond = max(0.0, m["peak_mb"] - m["model_mb"])
        print(f"{name:<30}{m['seconds']:>9.3f}{m['model_mb']:>10.0f}{m['peak_mb']:>9.0f}{beyond:>17.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

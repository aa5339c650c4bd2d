"""How far `fast=` moves the vectors: min cosine of fast=True and fast="max" to exact decoding.

Run alone: python benchmarks/fast_parity.py [--photos 240] [--out benchmarks/results/fast_parity.txt]

The benchmark model (random-init open_clip ViT-B-32, seed 0, fp32; made once in benchmarks/out/) and the
benchmark photos (1-4 MP JPEGs made from scikit-image's photos), as in README's Speed tables. A cosine is a
property of the arithmetic, not of the machine's speed: the figures do not depend on load. Prints a table
and writes it, with the machine and date, to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--out", default=str(HERE / "results" / "fast_parity.txt"))
    args = parser.parse_args()

    from fastclip import ImageEmbedding

    machine = common.machine()
    paths = common.photos(args.photos)
    folder = common.model_folder(precisions="fp32")
    vectors, seconds = {}, {}
    for fast in (False, True, "max"):
        with ImageEmbedding(folder, fast=fast) as model:
            t = time.perf_counter()
            vectors[fast] = np.stack(list(model.embed(paths, batch_size=32)))
            seconds[fast] = time.perf_counter() - t
    rows = []
    for fast in (True, "max"):
        cos = common.cosine_rows(vectors[fast], vectors[False])
        rows.append([f"fast={fast!r}", f"{cos.min():.7f}", f"{1 - cos.min():.1e}", f"{np.median(cos):.7f}",
                     f"{seconds[fast]:.0f}"])
    table = common.md_table(["mode", "min cosine to exact", "1 - min", "median cosine", "embed s (under load)"], rows)
    text = (f"# fast= vs exact decoding, {len(paths)} benchmark JPEGs (1-4 MP), random-init ViT-B/32 fp32, "
            f"batch 32\n\n{common.machine_md(machine)}\n{table}\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

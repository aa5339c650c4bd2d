"""Memory stays flat on a long stream: embed 10,000 images from a generator, report RSS along the way.

The generator repeats the benchmark photos (1-4 MP JPEG paths) lazily; vectors are consumed and
dropped as they come, as a pipeline writing them to a database would. RSS (current and peak) is read
at the checkpoints; flat means the peak at 10k is the peak at 1k.

    python benchmarks/stream_rss.py                         # fastest mode (fast='max', int8), 10,000 images
    python benchmarks/stream_rss.py --mode exact --images 2000
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = {"exact": {}, "fast": {"fast": True}, "fastest": {"fast": "max", "precision": "int8"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=common.MODEL)
    ap.add_argument("--mode", choices=sorted(MODES), default="fastest")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--checkpoints", default="100,1000,5000,10000")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--photos", type=int, default=240)
    ap.add_argument("--out", type=Path, default=common.OUT)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    from fastclip import ImageEmbedding

    paths = common.photos(a.photos)
    model = common.model_folder(a.model) if a.model == common.MODEL else a.model
    emb = ImageEmbedding(model, **MODES[a.mode])
    marks = sorted({int(c) for c in a.checkpoints.split(",") if int(c) <= a.images} | {a.images})
    stream = itertools.islice(itertools.cycle(paths), a.images)  # lazy: never a list of 10,000
    rows, total = [], np.zeros(emb.dim, np.float64)
    rss0 = common.rss_mb()
    t0 = time.perf_counter()
    for n, vec in enumerate(emb.embed(stream, batch_size=a.batch_size), 1):
        total += vec
        if n in marks:
            rows.append({"images": n, "rss_mb": common.rss_mb(), "peak_rss_mb": common.peak_rss_mb(),
                         "img_s": n / (time.perf_counter() - t0)})
            print(f"{n:>6} images: RSS {rows[-1]['rss_mb']:.0f} MB, peak {rows[-1]['peak_rss_mb']:.0f} MB, "
                  f"{rows[-1]['img_s']:.1f} img/s", file=sys.stderr)
    first = next(r for r in rows if r["images"] >= min(1000, a.images))
    growth = rows[-1]["peak_rss_mb"] - first["peak_rss_mb"]
    md = (f"### Streaming {a.images:,} images (fastclip {a.mode} mode, batch {a.batch_size}, generator input)\n\n"
          + common.md_table(["images embedded", "RSS MB", "peak RSS MB", "img/s so far"],
                            [[f"{r['images']:,}", f"{r['rss_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['img_s']:.1f}"]
                             for r in rows])
          + f"\nRSS after loading the model: {rss0:.0f} MB. Peak RSS growth from {first['images']:,} to "
            f"{rows[-1]['images']:,} images: **{growth:+.0f} MB** ({'flat' if abs(growth) < 20 else 'NOT flat'}).\n")
    print(md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "stream_rss.md").write_text(md)
    if a.json:
        a.json.write_text(json.dumps({"mode": a.mode, "rss_loaded_mb": rss0, "rows": rows, "growth_mb": growth}, indent=1))


if __name__ == "__main__":
    main()

"""fastclip in-process vs fastclip on Ray Data, same CPUs, one run; and what `read_images` costs in exactness.

Throughput: --images JPEGs (the 240 1-4 MP benchmark photos of benchmarks/out/photos, reused cyclically
through symlinks so every row is its own file) embedded with the full-size ViT-B/32 export (fp32), in
interleaved rounds:

* in-process: ImageEmbedding(model).embed(paths) in this process (model load timed separately);
* ray-paths:  fastclip.ray.embed_images(paths): a `path` column, the actor opens the files;
* ray-bytes:  read_binary_files(include_paths=True) -> map_batches(ImageEmbedder): Ray's read tasks
              read the bytes and ship them through the object store, the actor decodes them.

Each Ray job starts its own actor pool (fastclip.ray.plan_resources: on 2 CPUs one actor reserving 1 CPU,
onnxruntime on both cores). "with start" is inputs / (job wall time, actor start and model load included);
"steady" leaves out everything up to the first batch reaching the driver: (inputs - first batch) /
(last batch time - first batch time). Ratios are per round, then the median over rounds.

Exactness: cosine between fastclip's own vectors and those from ray.data.read_images(mode=...) rows,
on the benchmark photos and on a few tricky files (EXIF-rotated JPEG, palette PNG, RGBA PNG, CMYK JPEG).

    python benchmarks/bench_ray.py                   # 1,000 images, 2 rounds, ~10 min on 2 busy cores
    python benchmarks/bench_ray.py --images 200 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

OUT = common.OUT / "ray"


def small_photos(megapixels: float) -> list[Path]:
    """The benchmark photos scaled down to about `megapixels` (JPEG quality 90), made once."""
    from PIL import Image

    photos = common.photos()
    if megapixels <= 0:
        return photos
    folder = OUT / f"photos-{megapixels:g}mp"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in photos:
        q = folder / p.name
        if not q.is_file():
            with Image.open(p) as im:
                scale = min(1.0, (megapixels * 1e6 / (im.width * im.height)) ** 0.5)
                im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS).save(q, quality=90)
        out.append(q)
    return out


def linked_photos(n: int, photos: list[Path], folder: Path) -> list[str]:
    """n distinct file names, reusing the photos cyclically (symlinks)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        link = folder / f"{i:05d}.jpg"
        target = photos[i % len(photos)].resolve()
        if link.is_symlink() and os.readlink(link) != str(target):
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target)
        paths.append(str(link))
    return paths


def run_in_process(model: str, paths: list[str], batch_size: int) -> dict:
    from fastclip import ImageEmbedding

    t0 = time.perf_counter()
    m = ImageEmbedding(model)
    t1 = time.perf_counter()
    n = sum(1 for _ in m.embed(paths, batch_size=batch_size))
    t2 = time.perf_counter()
    m.close()
    return {"with_start": n / (t2 - t0), "steady": n / (t2 - t1), "load_s": t1 - t0}


READY = OUT / "actor-ready.txt"


def timed_batches(ds, n_expected: int) -> dict:
    READY.unlink(missing_ok=True)
    t0 = time.time()
    rows = failed = 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        rows += len(batch["error"])
        failed += sum(1 for e in batch["error"] if e)
    end = time.time()
    assert rows == n_expected and failed == 0, (rows, failed)
    # Ray Data hands results over in bursts, so "after the first batch" is no clean cut; the moment the
    # (single) actor finished loading the model is: same machine, same clock.
    ready = float(READY.read_text().split()[0])
    return {"with_start": rows / (end - t0), "steady": rows / (end - ready), "start_s": ready - t0}


def timed_embedder():
    from fastclip.ray import ImageEmbedder

    class TimedImageEmbedder(ImageEmbedder):
        """ImageEmbedder that notes when its model is loaded (to leave actor start-up out of "steady")."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            with open(READY, "a") as f:
                f.write(f"{time.time()}\n")

    return TimedImageEmbedder


def run_ray(kind: str, model: str, paths: list[str], batch_size: int) -> dict:
    import ray

    from fastclip.ray import map_batches_kwargs, plan_resources

    plan = plan_resources()  # what embed_images picks: on 2 CPUs one actor, 1 CPU reserved, ORT on 2 threads
    assert plan["actors"] == 1, "the steady-state clock assumes one actor"
    if kind == "ray-paths":
        ds = ray.data.from_items([{"path": p} for p in paths])
    else:
        ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.map_batches(timed_embedder(), fn_constructor_kwargs={"model": model, "threads": plan["threads"]},
                        batch_size=batch_size, num_cpus=plan["num_cpus"], **map_batches_kwargs(plan["actors"]))
    return timed_batches(ds, len(paths))


def tricky_files(folder: Path) -> list[str]:
    """Files whose decoding differs between fastclip (the reference's order) and Ray's read_images."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.asarray(data.astronaut()))
    out = []
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": how phones store portrait photos
    p = folder / "exif-rotated.jpg"
    rgb.save(p, quality=92, exif=exif)
    out.append(p)
    p = folder / "palette.png"
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(p)
    out.append(p)
    rgba = rgb.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, rgb.width, dtype=np.uint8), (rgb.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    p = folder / "rgba.png"
    rgba.save(p)
    out.append(p)
    p = folder / "cmyk.jpg"
    rgb.convert("CMYK").save(p, quality=92)
    out.append(p)
    p = folder / "gray.png"
    Image.fromarray(np.asarray(data.camera())).save(p)
    out.append(p)
    return [str(x) for x in out]


def read_images_cosines(model: str, paths: list[str], mode: str | None) -> dict[str, float]:
    import ray

    from fastclip import ImageEmbedding
    from fastclip.ray import ImageEmbedder

    with ImageEmbedding(model) as m:
        exact = {p: v for p, v in zip(paths, m.embed(paths))}
    ds = ray.data.read_images(paths, include_paths=True, mode=mode).map_batches(
        ImageEmbedder, fn_constructor_kwargs={"model": model}, batch_size=16,
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    out = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for path, vec, err in zip(batch["path"], batch["embedding"], batch["error"]):
            # read_images reports paths without the leading "/" of a local file system
            key = path if path in exact else "/" + str(path)
            out[key] = err if err else float(np.dot(exact[key], vec) / np.linalg.norm(vec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--systems", default="in-process,ray-paths,ray-bytes")
    ap.add_argument("--megapixels", type=float, default=0.3,
                    help="scale the photos down to about this size first (0: the 1-4 MP originals)")
    ap.add_argument("--exact-photos", type=int, default=60, help="photos for the read_images exactness check")
    ap.add_argument("--no-exactness", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    machine = common.machine()
    model = str(common.model_folder() / "vision")
    paths = linked_photos(args.images, small_photos(args.megapixels), OUT / "links")
    systems = args.systems.split(",")
    # 2 CPUs as this machine has; the object store capped because the machine is shared.
    ray.init(num_cpus=os.cpu_count(), object_store_memory=500 * 2**20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results: dict = {"machine": machine, "ray": ray.__version__, "images": args.images, "megapixels": args.megapixels,
                     "batch_size": args.batch_size, "rounds": {s: [] for s in systems}}
    try:
        for r in range(args.rounds):
            for s in systems:
                res = run_in_process(model, paths, args.batch_size) if s == "in-process" else \
                    run_ray(s, model, paths, args.batch_size)
                res["load_avg"] = os.getloadavg()[0]
                results["rounds"][s].append(res)
                print(f"round {r + 1}/{args.rounds} {s}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()),
                      file=sys.stderr, flush=True)
        if not args.no_exactness:
            photos = [str(p) for p in common.photos()[: args.exact_photos]]
            tricky = tricky_files(OUT / "tricky")
            results["exactness"] = {}
            for mode in ("RGB", None):
                cos = read_images_cosines(model, photos + tricky, mode)
                on_photos = np.array([cos[p] if isinstance(cos[p], float) else np.nan for p in photos])
                results["exactness"][str(mode)] = {
                    "photos": len(photos), "photos_min_cosine": float(np.nanmin(on_photos)),
                    "photos_median_cosine": float(np.nanmedian(on_photos)), "photos_failed": int(np.isnan(on_photos).sum()),
                    "tricky": {Path(p).name: cos.get(p) for p in tricky},
                }
    finally:
        ray.shutdown()
    results["load_avg_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print_table(results)


def print_table(results: dict) -> None:
    rounds = results["rounds"]
    base = rounds.get("in-process")
    print(f"\n{results['images']} images (~{results['megapixels']:g} MP JPEGs; 0 = 1-4 MP originals), batch {results['batch_size']}, Ray {results['ray']}, "
          f"{results['machine']['cpu']}, {results['machine']['cores']} cores, load avg at start "
          f"{results['machine']['load_avg_at_start']}, at end {results['load_avg_end']}\n")
    print("| system | img/s steady (median) | img/s with start | steady vs in-process (per round) | start-up s (model load / job start to actor ready) |")
    print("|---|---|---|---|---|")
    for s, rs in rounds.items():
        steady = np.median([r["steady"] for r in rs])
        start = np.median([r["with_start"] for r in rs])
        ratio = "" if base is None or s == "in-process" else ", ".join(
            f"{r['steady'] / b['steady']:.2f}" for r, b in zip(rs, base))
        ratio_start = "" if base is None or s == "in-process" else " (with start: " + ", ".join(
            f"{r['with_start'] / b['with_start']:.2f}" for r, b in zip(rs, base)) + ")"
        up = np.median([r.get("start_s", r.get("load_s", 0)) for r in rs])
        print(f"| {s} | {steady:.1f} | {start:.1f} | {ratio}{ratio_start} | {up:.1f} |")
    for mode, ex in results.get("exactness", {}).items():
        print(f"\nread_images(mode={mode}): {ex['photos']} benchmark photos: cosine to exact min {ex['photos_min_cosine']:.7f} "
              f"median {ex['photos_median_cosine']:.7f} ({ex['photos_failed']} failed); tricky files: "
              + "; ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} error: {v}" for k, v in ex["tricky"].items()))


if __name__ == "__main__":
    main()

"""Full-size model families, random weights: export time, peak RSS, folder size, parity, throughput, fast=.

For each model (one at a time, each in a fresh child process so its peak RSS is its own):
  1. `fastclip_export.api.export_model` with fp32, fp16 and int8, preprocessing as the named pretrained
     tag sets it (resize mode, filter, mean/std: the tag's weights are not downloaded, random weights
     are used), both towers where fastclip exports the text tower, else the image tower alone;
  2. a second child loads the folder with the fastclip runtime: img/s (fp32, batch 8, --images 1-4 MP
     JPEGs from disk, exact preprocessing) and texts/s (fp32, batch 64), and how far `fast=True` /
     `fast="max"` move the image vectors (min cosine against exact, same photos, the model's own resize).

Cosines per precision are the export's own verification (8 photos / 12 sentences against torch fp32).
Prints a table and writes benchmarks/results/families.json and families.md; rows are merged by model.
Never run two at once on a shared machine; every figure comes with the load average it was taken at.

    python benchmarks/bench_families.py                         # every model below that fits in memory
    python benchmarks/bench_families.py RN50x4 MobileCLIP2-S0   # some of them
    python benchmarks/bench_families.py --fast-modes ViT-B-16-SigLIP2   # fast= per resize mode x filter
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results" / "families.json"
REPORT = HERE / "results" / "families.md"
WORK = HERE / "out" / "families"

# The models of issue 17, with the pretrained tag whose preprocessing the export takes.
MODELS = {
    "ViT-B-16-SigLIP2": "webli",
    "ViT-SO400M-14-SigLIP2-378": "webli",
    "MobileCLIP2-S0": "dfndr2b",
    "MobileCLIP2-S4": "dfndr2b",
    "PE-Core-L-14-336": "meta",
    "xlm-roberta-large-ViT-H-14": "frozen_laion5b_s13b_b90k",
    "nllb-clip-base-siglip": "v1",
    "EVA02-L-14": "merged2b_s4b_b131k",
    "convnext_base_w": "laion2b_s13b_b82k",
    "RN50x4": "openai",
}
PRECISIONS = ("fp32", "fp16", "int8")


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------ child: export

def export_child(arch: str, tag: str, out: Path) -> dict:
    from fastclip.errors import ExportError
    from fastclip_export import api
    from fastclip_export.open_clip_config import config_problem

    towers = ("vision", "text") if config_problem(arch, tag) is None else ("vision",)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    note = None
    # Random weights with the tag's preprocessing (preprocess=tag): the tag's weights are not downloaded.
    try:
        api.export_model(f"open_clip:{arch}", out, pretrained="none", preprocess=tag, precisions=PRECISIONS,
                         overwrite=True, towers=towers, log=lambda m: print(f"  {m}", file=sys.stderr))
    except ExportError as exc:
        # The text tower's tokenizer (or HF text config) lives on the hub; offline and not cached, the
        # image tower is still measured, and the row says why the text tower is missing.
        if towers == ("vision",) or "hub" not in str(exc):
            raise
        note = f"text tower: {str(exc).splitlines()[0][:160]}"
        towers = ("vision",)
        started = time.perf_counter()
        api.export_model(f"open_clip:{arch}", out, pretrained="none", preprocess=tag, precisions=PRECISIONS,
                         overwrite=True, towers=towers, log=lambda m: print(f"  {m}", file=sys.stderr))
    seconds = time.perf_counter() - started
    manifest = json.loads((out / "fastclip.json").read_text())
    cosines = {tower: {p: manifest[tower]["verification"][p]["min_cosine"] for p in PRECISIONS}
               for tower in ("vision", "text") if manifest.get(tower)}
    return {"towers": list(towers), "note": note, "export_s": round(seconds, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "folder_mb": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6, 1),
            "cosines": cosines, "preprocess": {k: manifest["vision"][k] for k in ("resize_mode", "interpolation")},
            "load_export": [round(load, 2), round(os.getloadavg()[0], 2)]}


# ------------------------------------------------------------------------------------------ child: runtime

def runtime_child(out: Path, n_images: int) -> dict:
    import numpy as np

    import common
    from fastclip import ImageEmbedding, TextEmbedding, manifest

    m = manifest.load(out)
    photos = common.photos(n_images)
    result: dict = {"load_runtime": [round(os.getloadavg()[0], 2)]}
    exact_model = ImageEmbedding(out)
    list(exact_model.embed(photos[:8], batch_size=8))  # warm-up
    started = time.perf_counter()
    exact = np.stack(list(exact_model.embed(photos, batch_size=8)))
    result["img_s"] = round(len(photos) / (time.perf_counter() - started), 2)
    for fast in (True, "max"):
        vectors = np.stack(list(ImageEmbedding(out, fast=fast).embed(photos, batch_size=8)))
        result[f"fast_{fast}_min_cos"] = float(common.cosine_rows(vectors, exact).min())
    if m.text is not None:
        texts = common.sentences(512)
        text_model = TextEmbedding(out)
        list(text_model.embed(texts[:64], batch_size=64))
        started = time.perf_counter()
        list(text_model.embed(texts, batch_size=64))
        result["texts_s"] = round(len(texts) / (time.perf_counter() - started), 1)
    result["load_runtime"].append(round(os.getloadavg()[0], 2))
    return result


# ------------------------------------------------------------------------------------ child: fast= per mode

def fast_modes_child(arch: str, n_images: int) -> dict:
    """How far fast=True / "max" move the vectors in each resize mode x filter, one image tower.

    The tower is exported once (fp32, random weights); each mode is the same ONNX file behind a manifest
    that names another resize (a folder holding that manifest and a link to the tower): the comparison
    is runtime against runtime, exact against drafted decoding, so the graph is the same on both sides.
    """
    import numpy as np

    import common
    from fastclip import ImageEmbedding
    from fastclip_export import api

    out = WORK / f"fast-modes-{arch}"
    if not (out / "fastclip.json").is_file():
        api.export_model(f"open_clip:{arch}", out, pretrained="none", preprocess=MODELS.get(arch), towers=("vision",),
                         overwrite=True, log=lambda m: print(f"  {m}", file=sys.stderr))
    base = json.loads((out / "fastclip.json").read_text())
    photos = common.photos(n_images)
    rows = {}
    for mode in ("shortest", "squash", "longest"):
        for interpolation in ("bicubic", "bilinear"):
            folder = WORK / f"fast-modes-{arch}-{mode}-{interpolation}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            (folder / "vision").symlink_to((out / "vision").resolve(), target_is_directory=True)
            manifest = {**base, "vision": {**base["vision"], "resize_mode": mode, "interpolation": interpolation}}
            (folder / "fastclip.json").write_text(json.dumps(manifest))
            exact = np.stack(list(ImageEmbedding(folder).embed(photos, batch_size=8)))
            rows[f"{mode}, {interpolation}"] = {
                str(fast): float(common.cosine_rows(np.stack(list(ImageEmbedding(folder, fast=fast).embed(photos, batch_size=8))), exact).min())
                for fast in (True, "max")}
            shutil.rmtree(folder)
            print(f"  {mode}, {interpolation}: {rows[f'{mode}, {interpolation}']} (load {load_avg()})", file=sys.stderr)
    return {"model": arch, "images": len(photos), "min_cos": rows, "load": load_avg()}


# ------------------------------------------------------------------------------------------------ parent

def run(arch: str, tag: str, n_images: int, keep: bool) -> dict:
    from fastclip_export import api

    out = WORK / arch
    row: dict = {"model": arch, "tag": tag}
    est = None
    try:
        from fastclip_export.open_clip_config import config_problem

        towers = ("vision", "text") if config_problem(arch, tag) is None else ("vision",)
        est = api.estimate_memory(f"open_clip:{arch}", "none", PRECISIONS, towers)
        from fastclip_export import memory

        available = memory.available_bytes()
        if available and est.peak_bytes > available:
            return {**row, "refused": f"estimated peak {est.peak_bytes / 1e9:.1f} GB > {available / 1e9:.1f} GB available"}
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return {**row, "refused": str(exc).splitlines()[0]}
    row["estimated_peak_gb"] = round(est.peak_bytes / 1e9, 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for phase, args in (("export", ["--child-export", arch, tag]), ("runtime", ["--child-runtime", arch, str(n_images)])):
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=ROOT)
        sys.stderr.write(proc.stderr[-3000:])
        if proc.returncode != 0:
            row["failed"] = f"{phase}: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
            break
        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def table(rows: list[dict]) -> str:
    import common

    header = ["model (tag's preprocessing)", "towers", "export s", "peak RSS GB", "folder MB", "vision fp32 / fp16 / int8",
              "text fp32 / fp16 / int8", "img/s", "texts/s", "fast=True / 'max' min cos", "load avg (export; runtime)"]
    out = []
    for r in rows:
        name = f"{r['model']} ({r['tag']}: {r.get('preprocess', {}).get('resize_mode', '?')}, "\
               f"{r.get('preprocess', {}).get('interpolation', '?')})"
        if "refused" in r or "failed" in r:
            out.append([name, r.get("refused") or r.get("failed")] + [""] * (len(header) - 2))
            continue
        cos = r.get("cosines", {})
        fmt = lambda t: " / ".join(f"{cos[t][p]:.6f}" for p in PRECISIONS) if t in cos else "-"  # noqa: E731
        out.append([name, "+".join(r["towers"]), r["export_s"], r["peak_rss_gb"], r["folder_mb"], fmt("vision"), fmt("text"),
                    r.get("img_s", "-"), r.get("texts_s", "-"),
                    f"{r.get('fast_True_min_cos', float('nan')):.6f} / {r.get('fast_max_min_cos', float('nan')):.6f}",
                    f"{'-'.join(map(str, r.get('load_export', [])))}; {'-'.join(map(str, r.get('load_runtime', [])))}"])
    return common.md_table(header, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"default: all of {', '.join(MODELS)}")
    ap.add_argument("--images", type=int, default=48, help="1-4 MP JPEGs for img/s and the fast= cosines")
    ap.add_argument("--keep", action="store_true", help=f"keep the exported folders under {WORK}")
    ap.add_argument("--child-export", nargs=2, metavar=("ARCH", "TAG"), help=argparse.SUPPRESS)
    ap.add_argument("--child-runtime", nargs=2, metavar=("ARCH", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--fast-modes", metavar="ARCH",
                    help="instead: how far fast=True / 'max' move ARCH's image vectors in each resize mode x filter")
    a = ap.parse_args()
    if a.fast_modes:
        result = fast_modes_child(a.fast_modes, a.images)
        path = HERE / "results" / "fast_modes.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"fast= against exact, min cosine over {result['images']} photos of 1-4 MP, {a.fast_modes} image tower "
              f"(random weights), load average {result['load']}")
        for combo, cos in result["min_cos"].items():
            print(f"  {combo:20} fast=True {cos['True']:.6f}   fast='max' {cos['max']:.6f}")
        return
    if a.child_export:
        print(json.dumps(export_child(*a.child_export, WORK / a.child_export[0])))
        return
    if a.child_runtime:
        print(json.dumps(runtime_child(WORK / a.child_runtime[0], int(a.child_runtime[1]))))
        return
    import common

    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    machine = common.machine()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for arch in a.models or list(MODELS):
        print(f"{arch}: load average {load_avg()}", file=sys.stderr)
        results[arch] = {**run(arch, MODELS[arch], a.images, a.keep), "machine": machine}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    rows = [results[m] for m in MODELS if m in results]
    report = ("# Model families, full size, random weights\n\n" + common.machine_md(machine) + "\n"
              "Each row was measured alone (one export at a time); the load average is given per row because this "
              "machine is shared: rerun on a quiet machine for speeds to compare.\n\n" + table(rows))
    REPORT.write_text(report)
    print(report)


if __name__ == "__main__":
    main()

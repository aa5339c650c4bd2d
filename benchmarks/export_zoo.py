"""Full-size exports of the CLIP zoo with random weights: time, peak memory, size and parity per precision.

Each model is exported in a child process (`fastclip_export.api.export_model`, every precision verified
against its torch reference by the export itself), with a sampler thread that records the peak resident
memory of each stage. A second child then runs the fastclip *runtime* end to end - its own image
decoding, resizing to the manifest's image size (224 / 336 / 378 px) and tokenizer - on real photos and
sentences, against the reference library's own preprocessing and encoders with the same seeded weights.

Too slow for CI (a ViT-H-14 takes minutes on 2 cores and ~9 GB); a person runs it:

    python benchmarks/export_zoo.py                      # every model below, writes benchmarks/EXPORT_ZOO.md
    python benchmarks/export_zoo.py ViT-L-14-336 hf-large  # some of them (table rows are merged by name)

Models that the memory estimate refuses on this machine are reported with the refusal, not run.
Never run two of these at once on a shared machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = HERE / "out" / "export_zoo.json"
REPORT = HERE / "EXPORT_ZOO.md"
PRECISIONS = ("fp32", "fp16", "int8")
OTHER_PEAKS = "## Peaks measured outside this script"

# name -> (MODEL argument of the export, what it stands for)
MODELS = {
    "ViT-B-32-quickgelu": ("open_clip:ViT-B-32-quickgelu", "QuickGELU activation (OpenAI / MetaCLIP weights)"),
    "ViT-L-14": ("open_clip:ViT-L-14", "OpenAI / LAION / DataComp L/14"),
    "ViT-L-14-336": ("open_clip:ViT-L-14-336", "336 px input"),
    "hf-large": ("hf-large", "transformers CLIPModel, openai/clip-vit-large-patch14 shape"),
    "ViT-H-14": ("open_clip:ViT-H-14", "LAION-2B H/14, the one users ask first"),
    "ViT-H-14-378-quickgelu": ("open_clip:ViT-H-14-378-quickgelu", "DFN H/14, 378 px, QuickGELU"),
    "ViT-bigG-14": ("open_clip:ViT-bigG-14", "LAION-2B bigG/14, 2.5 B parameters"),
}
# Random weights of an architecture whose tags preprocess differently follow one tag's preprocessing (the
# export refuses to guess): the tag the row stands for, whose preprocessing is open_clip's default.
PREPROCESS = {"open_clip:ViT-L-14": "openai", "open_clip:ViT-H-14": "laion2b_s32b_b79k"}


def hf_large_checkpoint(folder: Path) -> Path:
    """A config-only checkpoint of openai/clip-vit-large-patch14's shape (exported with random weights),
    its legacy token ids included (eos_token_id 2: transformers pools at the highest id)."""
    from conftest import copy_tokenizer_files
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                           image_size=224, patch_size=14),
        projection_dim=768,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    copy_tokenizer_files(folder)
    return folder


def model_argument(name: str, work: Path) -> str:
    spec = MODELS[name][0]
    return str(hf_large_checkpoint(work / "hf-large-config")) if spec == "hf-large" else spec


# ------------------------------------------------------------------------------------------ children

class StageSampler:
    """Peak RSS per export stage: the stage is named by the last log line, RSS sampled every 20 ms and
    corrected by the kernel's high-water mark (exact for the stage that sets it)."""

    def __init__(self):
        self.stage, self.t0 = "start", time.perf_counter()
        self.lines: list[tuple[float, str]] = []
        self.peaks: dict[int, float] = {}
        self.high = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            i = len(self.lines)
            self.peaks[i] = max(self.peaks.get(i, 0.0), self.rss())

    def log(self, message: str) -> None:
        import resource

        i = len(self.lines)
        self.peaks[i] = max(self.peaks.get(i, 0.0), self.rss())
        # Sampling misses short spikes (the exporter's protobuf copies); when the process's exact
        # high-water mark rose during this stage, that mark is this stage's peak.
        high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
        if high > self.high:
            self.peaks[i] = max(self.peaks[i], high)
            self.high = high
        self.lines.append((time.perf_counter() - self.t0, message))
        print(f"{self.lines[-1][0]:7.1f} s  {message}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child_export(model: str, out: Path, precisions: list[str]) -> None:
    from fastclip_export.api import export_model

    sampler = StageSampler()
    error = None
    try:
        export_model(model, out, pretrained="none", preprocess=PREPROCESS.get(model), precisions=precisions,
                     overwrite=True, log=sampler.log)
    except Exception as exc:  # reported in the table, not a traceback
        error = f"{type(exc).__name__}: {exc}"
    sampler.stop()
    # Interval i runs from log line i-1 to line i; the line that ends it says which precision it served.
    stages = []
    prev = 0.0
    for i, (t, message) in enumerate(sampler.lines):
        precision = next((p for p in PRECISIONS if f" {p}: " in message), "fp32")
        stages.append({"end": t, "seconds": t - prev, "peak_rss": sampler.peaks.get(i, 0.0), "precision": precision,
                       "message": message})
        prev = t
    print(json.dumps({"stages": stages, "error": error}))


def child_runtime(model: str, out: Path, precisions: list[str]) -> None:
    """The runtime end to end against the reference library, same seeded weights as the export."""
    import numpy as np
    import torch
    from fastclip_export.api import load_source
    from support.photos import SENTENCES, cosines, write_photos
    from PIL import Image

    from fastclip import ImageEmbedding, TextEmbedding

    folder = Path(tempfile.mkdtemp(prefix="zoo-photos-"))
    try:
        photos = write_photos(folder)
        torch.manual_seed(0)  # what export_model does before loading: the same random weights
        source = load_source(model, "none", preprocess=PREPROCESS.get(model))
        with torch.no_grad():
            pixels = torch.stack([source.preprocess(Image.open(p).convert("RGB")) for p in photos])
            ref_img = (source.reference_vision or source.vision)(pixels).float().numpy()
            ref_txt = (source.reference_text or source.text)(source.tokenize(SENTENCES)).float().numpy()
        del source, pixels
        gc.collect()
        result = {}
        for p in precisions:
            img = np.stack(list(ImageEmbedding(out, precision=p, exif_transpose=False).embed(photos, normalize=False)))
            gc.collect()
            txt = np.stack(list(TextEmbedding(out, precision=p).embed(SENTENCES, normalize=False)))
            gc.collect()
            result[p] = {"vision": float(cosines(img, ref_img).min()), "text": float(cosines(txt, ref_txt).min()),
                         "images": len(photos), "texts": len(SENTENCES)}
        print(json.dumps(result))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -------------------------------------------------------------------------------------------- parent

def run_child(args: list[str], log: Path) -> tuple[dict | None, float, float]:
    """(the child's JSON line, wall seconds, peak RSS of that child from wait4)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        stdout = proc.stdout.read()
        _, _, usage = os.wait4(proc.pid, 0)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), time.perf_counter() - started, usage.ru_maxrss * 1024.0


def folder_sizes(out: Path) -> dict:
    from fastclip import manifest

    m = manifest.load(out)
    sizes, parity = {}, {}
    for tower_name, tower in (("vision", m.vision), ("text", m.text)):
        for p, f in tower.files.items():
            size = sum((out / x).stat().st_size for x in (f.path, *f.external_data))
            sizes[p] = sizes.get(p, 0) + size
            v = tower.verification[p]
            parity.setdefault(p, {})[tower_name] = v.min_cosine
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"sizes": sizes, "parity": parity, "files": len(files), "folder_bytes": sum(p.stat().st_size for p in files),
            "image_size": m.vision.image_size, "embed_dim": m.embed_dim,
            "modes": sorted({oct(p.stat().st_mode & 0o777) for p in [out, *out.rglob("*")]})}


def run_model(name: str, work: Path, precisions: list[str]) -> dict:
    from fastclip_export import api, memory

    model = model_argument(name, work)
    est = api.estimate_memory(model, "none", precisions)
    available = memory.available_bytes()
    row = {"name": name, "model": MODELS[name][0], "what": MODELS[name][1], "params": est.params,
           "estimate_bytes": est.peak_bytes, "estimate_stage": est.stage, "available_bytes": available}
    print(f"\n== {name}: {est.params / 1e6:.0f} M parameters, estimated peak {est.peak_bytes / 1e9:.1f} GB "
          f"({est.stage}), {available / 1e9:.1f} GB available", flush=True)
    try:
        memory.check(model, est, precisions, available)
    except Exception as exc:
        row["refused"] = str(exc)
        print(f"   refused: {exc}", flush=True)
        return row
    out = work / name
    log = work / f"{name}.log"
    child, wall, peak = run_child(["--child-export", model, str(out), ",".join(precisions)], log)
    row.update(wall_s=wall, peak_rss=peak)
    if child is None or child["error"]:
        row["error"] = child["error"] if child else f"export child died (see {log})"
        print(f"   failed: {row['error']}", flush=True)
        return row
    per = {p: {"seconds": 0.0, "peak_rss": 0.0} for p in precisions}
    for s in child["stages"]:
        per[s["precision"]]["seconds"] += s["seconds"]
        per[s["precision"]]["peak_rss"] = max(per[s["precision"]]["peak_rss"], s["peak_rss"])
    row["per_precision"] = per
    row.update(folder_sizes(out))
    runtime, _, runtime_peak = run_child(["--child-runtime", model, str(out), ",".join(precisions)], log)
    row["runtime"], row["runtime_peak_rss"] = runtime, runtime_peak
    print_row(row)
    shutil.rmtree(out, ignore_errors=True)
    return row


def print_row(row: dict) -> None:
    print(f"   export {row['wall_s']:.0f} s, peak RSS {row['peak_rss'] / 1e9:.1f} GB (estimate "
          f"{row['estimate_bytes'] / 1e9:.1f}), {row['files']} files, {row['folder_bytes'] / 1e9:.2f} GB, "
          f"modes {row['modes']}")
    print(f"   {'precision':<9} {'export s':>8} {'peak RSS GB':>11} {'size GB':>8} {'export min cos (vision / text)':>32}"
          f" {'runtime min cos (vision / text)':>32}")
    for p, stage in row["per_precision"].items():
        par, rt = row["parity"][p], (row.get("runtime") or {}).get(p, {})
        print(f"   {p:<9} {stage['seconds']:>8.0f} {stage['peak_rss'] / 1e9:>11.1f} {row['sizes'][p] / 1e9:>8.2f} "
              f"{par['vision']:>15.7f} / {par['text']:.7f} {rt.get('vision', float('nan')):>15.7f} / {rt.get('text', float('nan')):.7f}")


def write_report(rows: list[dict]) -> None:
    from common import machine, machine_md, md_table

    lines = ["# Export zoo: full-size CLIP exports with random weights\n",
             "Written by `benchmarks/export_zoo.py`. Each model is exported with `--precision fp32,fp16,int8`"
             " in a child process; *export s* and *peak RSS* are per precision (fp32 includes loading and"
             " tracing the torch model; fp16 / int8 are making and verifying that variant from the saved fp32"
             " file). *Export min cos* is the export's own verification against the reference encoders"
             " (8 real photos, 12 sentences at full and shortest padding); *runtime min cos* is fastclip's runtime end to end (its own"
             " decoding, resize to the manifest's image size, tokenizer) against the reference library's"
             " preprocessing and encoders with the same seeded weights. Size is the graph plus its external"
             " data, both towers.\n",
             machine_md(machine())]
    summary = []
    for row in rows:
        if "refused" in row or "error" in row:
            summary.append([row["name"], f"{row['params'] / 1e6:.0f} M", "-", "-", "-",
                            f"{row['estimate_bytes'] / 1e9:.1f}", "-", ("refused: " + row["refused"]) if "refused" in row else row["error"]])
            continue
        summary.append([row["name"], f"{row['params'] / 1e6:.0f} M", row["embed_dim"], row["image_size"],
                        f"{row['wall_s']:.0f}", f"{row['estimate_bytes'] / 1e9:.1f}", f"{row['peak_rss'] / 1e9:.1f}",
                        f"{row['files']} files, {row['folder_bytes'] / 1e9:.2f} GB, modes {' '.join(row['modes'])}"])
    lines.append(md_table(["model", "params", "dim", "px", "export s (all)", "estimate GB", "peak RSS GB", "folder"], summary))
    for row in rows:
        if "per_precision" not in row:
            continue
        lines.append(f"\n## {row['name']} ({row['model']}: {row['what']})\n")
        table = []
        for p, stage in row["per_precision"].items():
            par, rt = row["parity"][p], (row.get("runtime") or {}).get(p, {})
            table.append([p, f"{stage['seconds']:.0f}", f"{stage['peak_rss'] / 1e9:.1f}", f"{row['sizes'][p] / 1e9:.3f}",
                          f"{par['vision']:.7f}", f"{par['text']:.7f}",
                          f"{rt.get('vision', float('nan')):.7f}", f"{rt.get('text', float('nan')):.7f}"])
        lines.append(md_table(["precision", "export s", "peak RSS GB", "size GB", "export cos vision", "export cos text",
                               "runtime cos vision", "runtime cos text"], table))
    # The hand-kept section of peaks measured elsewhere (the memory-estimate test reads it) survives a rewrite.
    old = REPORT.read_text(encoding="utf-8") if REPORT.exists() else ""
    if OTHER_PEAKS in old:
        lines.append("\n\n" + old[old.index(OTHER_PEAKS):].rstrip("\n") + "\n")
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    print(f"\nwrote {REPORT}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("--child-export", "--child-runtime"):
        fn = child_export if sys.argv[1] == "--child-export" else child_runtime
        fn(sys.argv[2], Path(sys.argv[3]), sys.argv[4].split(","))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(MODELS), help=f"any of: {', '.join(MODELS)}")
    ap.add_argument("--work", default=str(HERE / "out" / "export-zoo"), help="scratch folder for the exports")
    ap.add_argument("--precision", default=",".join(PRECISIONS))
    ap.add_argument("--report-only", action="store_true", help=f"rewrite {REPORT.name} from {RESULTS.name}")
    a = ap.parse_args()
    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r} (choose from {', '.join(MODELS)})")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in a.models if not a.report_only else ():
        results[name] = run_model(name, work, a.precision.split(","))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
    write_report([refresh_estimate(results[n], work) for n in MODELS if n in results])
    return 0


def refresh_estimate(row: dict, work: Path) -> dict:
    """The estimate as the current factors give it (rows may come from a run with older factors)."""
    from fastclip_export import api

    est = api.estimate_memory(model_argument(row["name"], work), "none", list(row.get("per_precision") or PRECISIONS))
    return {**row, "estimate_bytes": est.peak_bytes, "estimate_stage": est.stage}


if __name__ == "__main__":
    sys.exit(main())

"""Long fuzzing run, started by hand: every kind of tests/support/fuzzing.py, crash-isolated.

    python benchmarks/fuzz.py --cases 20000 [--seed 1] [--kinds image-mutate,tokenizer-mutate] [--model DIR]

Cases run in chunks, each chunk in its own Python process with a timeout: a segfault or an abort in a
decoder (native code) ends only that chunk, which is then re-run case by case to name the crashing case.
Prints one line per finding and a table of counts per kind. Without --model, a tiny random open_clip
model is exported to a temporary folder first (needs the [export] extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZING = ROOT / "benchmarks" / "fuzz_chunk.py"
sys.path.insert(0, str(ROOT / "tests"))

from support.fuzzing import KINDS, case_count


def tiny_model(folder: Path) -> Path:
    import torch
    from conftest import SEED, TINY_OPEN_CLIP_CONFIG, TINY_OPEN_CLIP_NAME
    from fastclip_export.api import export_model
    from fastclip_export.torchvision_compat import import_open_clip

    config = folder / f"{TINY_OPEN_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    import_open_clip().add_model_config(config)
    torch.manual_seed(SEED)
    return export_model(f"open_clip:{TINY_OPEN_CLIP_NAME}", folder / "model", pretrained="none", log=lambda _: None)


def run_chunk(kind: str, start: int, stop: int, seed: int, model: Path, timeout: float) -> tuple[dict, list, str | None]:
    cmd = [sys.executable, str(FUZZING), "--kind", kind, "--start", str(start), "--stop", str(stop),
           "--seed", str(seed), "--model", str(model)]
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    except subprocess.TimeoutExpired:
        return {}, [], f"chunk timed out after {timeout:.0f} s"
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    findings = [x for x in lines if "summary" not in x]
    summary = next((x for x in lines if "summary" in x), {})
    crash = None if r.returncode == 0 else f"exit code {r.returncode}: {r.stderr.strip()[-300:]}"
    return summary, findings, crash


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="cases per kind (enumerating kinds: at most all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--model", type=Path)
    parser.add_argument("--chunk", type=int, default=500)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    model = args.model or tiny_model(Path(tmp.name))
    rows = []
    for kind in args.kinds.split(","):
        total = case_count(kind, model)
        n = args.cases if total is None else min(args.cases, total)
        counts = {"ok": 0, "error": 0, "finding": 0, "crash": 0}
        started = time.perf_counter()
        for start in range(0, n, args.chunk):
            stop = min(n, start + args.chunk)
            summary, findings, crash = run_chunk(kind, start, stop, args.seed, model, timeout=60 + 2 * (stop - start))
            for f in findings:
                print("FINDING", json.dumps(f), flush=True)
            if crash:  # re-run the chunk one case at a time to name the case that takes the process down
                for i in range(start, stop):
                    s, _, c1 = run_chunk(kind, i, i + 1, args.seed, model, timeout=60)
                    if c1:
                        counts["crash"] += 1
                        print("CRASH", json.dumps({"kind": kind, "case": i, "seed": args.seed, "why": c1}), flush=True)
                    for key in ("ok", "error", "finding"):
                        counts[key] += s.get(key, 0)
            else:
                for key in ("ok", "error", "finding"):
                    counts[key] += summary.get(key, 0)
        rows.append((kind, n, counts, time.perf_counter() - started))
    print(f"\nfuzzing, seed {args.seed}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{'kind':<20}{'cases':>8}{'result':>8}{'error':>8}{'finding':>9}{'crash':>7}{'s':>8}")
    for kind, n, c, secs in rows:
        print(f"{kind:<20}{n:>8}{c['ok']:>8}{c['error']:>8}{c['finding']:>9}{c['crash']:>7}{secs:>8.1f}")
    return 1 if any(c["finding"] or c["crash"] for _, _, c, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

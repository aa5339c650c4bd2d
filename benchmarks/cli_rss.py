"""Peak RSS of `fastclip embed` at 10,000 and 100,000 inputs: flat means the growth is the input list only.

Each run is a fresh `fastclip embed` process; its peak RSS is the kernel's VmHWM of that process, read as
it exits, so the model, the decode threads, the writer and the final rename are all counted.

What is embedded, so that 100,000 inputs take minutes on 2 cores while every row is a real 512-d vector:
a tiny open_clip architecture with embed_dim 512 (width 64, 2 layers per tower, random weights, exported
once with fastclip_export into --work), generated sentences (benchmarks/common.sentences) and small
generated PNGs (16x16 noise; the decoder and the 224 px resize still run on each). The row size is the
real ViT-B/32 one (512 float32 = 2 KB), which is what a CLI that keeps every vector grows by; the model's
own memory is constant, so a full-size model shifts every row of the table by the same amount.

With --baseline REV (default e294c55, the CLI before streaming output) the same runs are made with that
revision's fastclip package, interleaved, for comparison.

    python benchmarks/cli_rss.py                              # texts and images, 10k and 100k, new vs baseline
    python benchmarks/cli_rss.py --sizes 10000 --kinds text --formats npy,jsonl,parquet --baseline ''
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import io
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TINY_512 = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_model(work: Path) -> Path:
    folder = work / "tiny512"
    if (folder / "fastclip.json").is_file():
        return folder
    config = work / "fastclip-bench-tiny512.json"
    config.write_text(json.dumps(TINY_512))
    print(f"exporting the tiny 512-d model into {folder} ...", file=sys.stderr)
    # In a child process: torch stays out of this one.
    code = (
        "import sys, torch; from fastclip_export.api import export_model; "
        "from fastclip_export.torchvision_compat import import_open_clip; "
        "import_open_clip().add_model_config(sys.argv[1]); torch.manual_seed(0); "
        "export_model('open_clip:fastclip-bench-tiny512', sys.argv[2], pretrained='none', log=lambda _: None)"
    )
    subprocess.run([sys.executable, "-c", code, str(config), str(folder)], check=True)
    return folder


def image_folder(work: Path, n: int) -> Path:
    """n small PNGs, made once (a 100k folder takes ~30 s to write)."""
    import numpy as np
    from PIL import Image

    folder = work / f"images{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print(f"writing {n} images into {folder} ...", file=sys.stderr)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    done.touch()
    return folder


def text_file(work: Path, n: int) -> Path:
    path = work / f"texts{n}.txt"
    if not path.exists():
        path.write_text("\n".join(common.sentences(n)) + "\n", encoding="utf-8")
    return path


def baseline_tree(work: Path, rev: str) -> Path:
    """The fastclip package of git revision `rev`, extracted for PYTHONPATH."""
    root = work / f"baseline-{rev}"
    if not (root / "fastclip").is_dir():
        data = subprocess.run(["git", "-C", str(common.ROOT), "archive", rev, "fastclip"], check=True,
                              capture_output=True).stdout
        root.mkdir(parents=True, exist_ok=True)
        tarfile.open(fileobj=io.BytesIO(data)).extractall(root)
    return root


# The CLI runs under this wrapper, which writes the process's VmHWM (peak RSS of its own address space)
# at exit. The kernel's ru_maxrss is no use here: it survives fork+exec, so a child reports at least the
# parent's peak.
WRAPPER = """
import atexit, runpy, sys
target = sys.argv[1]
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(target, "w").write(line.split()[1])
atexit.register(report)
sys.argv = ["fastclip", *sys.argv[2:]]
runpy.run_module("fastclip.cli", run_name="__main__")
"""


def run_cli(pythonpath: Path, args: list[str], work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "HF_HUB_OFFLINE": "1"}
    hwm = work / "vmhwm.txt"
    hwm.unlink(missing_ok=True)
    t0 = time.perf_counter()
    # cwd=work: `python -c` puts the current folder first on sys.path, which from a checkout would import
    # its fastclip/ instead of the one PYTHONPATH names.
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(hwm), "-q", *args], env=env, cwd=work,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fastclip {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
    return {"peak_rss_mb": int(hwm.read_text()) / 1024, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--kinds", default="text,image")
    ap.add_argument("--formats", default="npy", help="comma list of npy, jsonl, parquet")
    ap.add_argument("--baseline", default="e294c55", help="git revision to compare with ('' for none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastclip-cli-rss"))
    ap.add_argument("--model", type=Path, help="model folder (default: the tiny 512-d export, made once)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    model = a.model or tiny_model(a.work)
    sizes = [int(s) for s in a.sizes.split(",")]
    systems = {"streaming (this tree)": common.ROOT / ".pyroot" if (common.ROOT / ".pyroot").is_dir() else common.ROOT}
    if a.baseline:
        systems[f"baseline {a.baseline}"] = baseline_tree(a.work, a.baseline)
    machine = common.machine()
    rows = []
    for kind in a.kinds.split(","):
        for n in sizes:
            source = ["--text-file", str(text_file(a.work, n))] if kind == "text" else [str(image_folder(a.work, n))]
            for fmt in a.formats.split(","):
                for name, path in systems.items():  # interleaved: both systems see the same machine state
                    out = a.work / "out" / f"{kind}{n}.{fmt}"
                    shutil.rmtree(out.parent, ignore_errors=True)
                    out.parent.mkdir(parents=True)
                    r = run_cli(path, ["embed", *source, "--model", str(model), "--out", str(out)], a.work)
                    r.update(system=name, kind=kind, format=fmt, inputs=n, load=os.getloadavg()[0])
                    rows.append(r)
                    print(f"{name:24} {kind:5} {fmt:7} {n:>7}: peak RSS {r['peak_rss_mb']:.0f} MB, "
                          f"{r['wall_s']:.1f} s, load {r['load']:.2f}", file=sys.stderr)
    table = [[r["system"], r["kind"], "." + r["format"], f"{r['inputs']:,}", f"{r['peak_rss_mb']:.0f}",
              f"{r['wall_s']:.1f}", f"{r['inputs'] / r['wall_s']:.0f}", f"{r['load']:.2f}"] for r in rows]
    growth = []
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        for key in sorted({(r["system"], r["kind"], r["format"]) for r in rows}):
            peak = {r["inputs"]: r["peak_rss_mb"] for r in rows if (r["system"], r["kind"], r["format"]) == key}
            growth.append([*key[:2], "." + key[2], f"{peak[hi] - peak[lo]:+.0f}"])
    md = ("### `fastclip embed` peak RSS (tiny 512-d model, generated inputs)\n\n"
          + common.md_table(["system", "kind", "format", "inputs", "peak RSS MB", "wall s", "inputs/s", "load"], table)
          + ("\n" + common.md_table(["system", "kind", "format", f"peak RSS growth {min(sizes):,} -> {max(sizes):,} (MB)"],
                                    growth) if growth else "")
          + "\n" + common.machine_md(machine))
    print(md)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "machine": machine}, indent=2))


if __name__ == "__main__":
    main()

"""parallel=: fastclip in this process vs N worker processes vs fastembed's parallel=2, same ONNX files.

Systems (each in its own fresh interpreter, all loaded at once, timed in interleaved rounds with
common.compare; figures are medians over rounds, ratios medians of same-round ratios):

* fastclip                 embed(items)               this process (decode threads + ORT threads)
* fastclip-parallel-N      embed(items, parallel=N)   a pool started and ended by every call (as a
                                                      user's one-off job pays it), N = 1, 2
* fastclip-pool-2          EmbeddingPool(model, 2)    two workers kept across calls (start-up paid once)
* fastembed                embed(items)
* fastembed-parallel-2     embed(items, parallel=2)   fastembed's own pool, started by every call

    python benchmarks/bench_parallel.py                    # images and texts, table + PNG
    python benchmarks/bench_parallel.py --kinds text --rounds 5
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
import common  # noqa: E402

SYSTEMS = ("fastclip", "fastclip-parallel-1", "fastclip-parallel-2", "fastclip-pool-2", "fastembed",
           "fastembed-parallel-2")
BATCH = {"image": 32, "text": 256}


def make(system: str, kind: str, model: Path):
    """embed(items, bs) -> (N, dim) for `system`, plus a closer."""
    if system.startswith("fastclip"):
        from fastclip import ImageEmbedding, TextEmbedding

        cls = ImageEmbedding if kind == "image" else TextEmbedding
        if system.startswith("fastclip-pool-"):
            from fastclip import EmbeddingPool

            pool = EmbeddingPool(cls(model, lazy_load=True), int(system.rsplit("-", 1)[1]))
            return lambda items, bs: np.stack(list(pool.embed(items, bs))), pool.close
        parallel = int(system.rsplit("-", 1)[1]) if "parallel" in system else None
        emb = cls(model, lazy_load=parallel is not None)  # the workers load it; this process need not
        return lambda items, bs: np.stack(list(emb.embed(items, bs, parallel))), emb.close
    from fastembed import ImageEmbedding, TextEmbedding

    parallel = 2 if system.endswith("parallel-2") else None
    if kind == "image":
        emb = ImageEmbedding("Qdrant/clip-ViT-B-32-vision", specific_model_path=str(model / "vision"),
                             providers=["CPUExecutionProvider"])
    else:
        emb = TextEmbedding("Qdrant/clip-ViT-B-32-text", specific_model_path=str(model / "text"),
                            providers=["CPUExecutionProvider"])
    return (lambda items, bs: np.stack(list(emb.embed([str(i) for i in items] if kind == "image" else items,
                                                      batch_size=bs, parallel=parallel)))), (lambda: None)


def worker(a) -> None:
    items = ([str(p) for p in common.photos(a.photos)] * a.repeat)[: a.images] if a.kind == "image" \
        else common.sentences(a.texts)
    t0 = time.perf_counter()
    embed, close = make(a.worker, a.kind, a.model)
    info = {"system": a.worker, "kind": a.kind, "items": len(items), "load_s": time.perf_counter() - t0}

    def finish() -> dict:
        close()
        return {}

    common.serve(embed, items, finish, info, a.save_vectors)


def plot(results: dict, machine: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results)
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), dpi=100, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        names = list(results[kind])
        values = [results[kind][s]["throughput"][str(BATCH[kind])] for s in names]
        ax.barh(names, values, color=["C0" if n.startswith("fastclip") else "C1" for n in names])
        ax.set_xlabel("images/s" if kind == "image" else "texts/s")
        ax.set_title(f"{kind}s, bs={BATCH[kind]}", fontsize=10)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"parallel=, ViT-B/32, {machine['cpu']} ({machine['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=common.MODEL)
    ap.add_argument("--kinds", default="image,text")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--photos", type=int, default=240)
    ap.add_argument("--images", type=int, default=480, help="images per pass (the photos, repeated)")
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=common.OUT)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--save-vectors", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return

    machine = common.machine()
    common.photos(a.photos)
    a.out.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve()
    results, cos = {}, {}
    repeat = -(-a.images // a.photos)
    for kind in a.kinds.split(","):
        base = ["--model", str(a.model), "--kind", kind, "--photos", str(a.photos), "--images", str(a.images),
                "--repeat", str(repeat), "--texts", str(a.texts)]
        args = {s: ["--worker", s, *base, "--save-vectors", str(a.out / f"parallel_{kind}_{s}.npy")]
                for s in a.systems.split(",")}
        results[kind] = common.compare(script, args, [BATCH[kind]], a.rounds, baseline="fastclip")
        vectors = {s: np.load(a.out / f"parallel_{kind}_{s}.npy") for s in args}
        ref = vectors["fastclip"] if "fastclip" in vectors else None
        cos[kind] = {s: (float(np.abs(v - ref).max()) if ref is not None else None) for s, v in vectors.items()}
    load_end = os.getloadavg()

    md = [f"### parallel=: throughput of in-process vs worker processes, ViT-B/32 (same ONNX files), "
          f"median of {a.rounds} interleaved rounds\n\n", common.machine_md(machine),
          f"- load average at end: {', '.join(f'{x:.2f}' for x in load_end)}\n\n"]
    for kind, res in results.items():
        bs = str(BATCH[kind])
        unit = "img/s" if kind == "image" else "texts/s"
        fe2 = res.get("fastembed-parallel-2")
        header = ["system", f"{unit} bs={bs}", "× fastclip in-process (min-max)", "× fastembed parallel=2",
                  "start s", "max abs diff to fastclip"]
        rows = []
        for s, r in res.items():
            ratio = r.get("ratio_fastclip", {}).get(bs)
            vs_fe = (f"{np.median(np.asarray(r['rounds'][bs]) / np.asarray(fe2['rounds'][bs])):.2f}×"
                     if fe2 else "-")
            rows.append([s, f"{r['throughput'][bs]:.1f}",
                         f"{ratio[0]:.2f}× ({ratio[1]:.2f}-{ratio[2]:.2f})" if ratio else "-", vs_fe,
                         f"{r['load_s']:.1f}", f"{cos[kind][s]:.1e}" if cos[kind][s] is not None else "-"])
        n = res[next(iter(res))]["items"]
        md.append(f"#### {kind}s ({n} per pass, batch size {bs})\n\n" + common.md_table(header, rows) + "\n")
    md.append("fastembed's CLIP text vectors are not normalized (fastclip's are), hence its diff on texts.\n")
    text = "".join(md)
    print(text)
    (a.out / "parallel.md").write_text(text)
    plot(results, machine, a.out / "parallel.png")
    (a.out / "parallel.json").write_text(json.dumps({"machine": machine, "results": results, "max_abs_diff": cos},
                                                    indent=1))
    print(f"wrote {a.out / 'parallel.md'} and {a.out / 'parallel.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()

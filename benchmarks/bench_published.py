"""fastclip vs fastembed 0.9.1 on the same published SigLIP 2 files (onnx-community/siglip2-base-patch16-224-ONNX's
transformers.js layout, the files fastembed's "google/siglip2-base-patch16-224" loads): image throughput on 1-4 MP
JPEGs at batch 32, text throughput, and single-item latency.

The files are re-created once with SigLIP 2 base's real widths and random weights (tests/support/published.py,
the recipe tests/test_layouts.py checks against transformers), into benchmarks/out/siglip2-base/. Both systems
load the same onnx/vision_model.onnx and onnx/text_model.onnx; fastclip by the folder (its transformers.js
reader), fastembed with specific_model_path. Every system runs in its own fresh interpreter and stays loaded;
the parent asks them in turn, round after round (common.Worker): throughput is the median over rounds, ratios
the median of same-round ratios, latency the p50 over all calls.

    python benchmarks/bench_published.py                    # full size: the reported figures (quiet machine)
    python benchmarks/bench_published.py --tiny             # a check that it runs (tiny widths, few inputs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

SYSTEMS = ("fastclip", "fastembed")
NAME = "google/siglip2-base-patch16-224"  # fastembed's model name for these files


def model_folder(size: str) -> Path:
    """The SigLIP 2 files in transformers.js's layout, made once per size (the tiny ones in seconds)."""
    folder = common.OUT / f"siglip2-{size}"
    if (folder / "onnx" / "text_model.onnx").is_file():
        return folder
    sys.path.insert(0, str(common.ROOT / "tests"))
    from fastclip_export.torchvision_compat import import_torchvision

    import_torchvision()  # transformers imports torchvision; see torchvision_compat
    from support import published

    scratch = folder.with_name(folder.name + ".partial")
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"making {size} SigLIP 2 files in {folder} ...", file=sys.stderr)
    published.onnx_siglip2(scratch, size=size, joint=False)
    scratch.rename(folder)
    return folder


class System:
    def __init__(self, name: str, folder: Path):
        if name == "fastclip":
            from fastclip import ImageEmbedding, TextEmbedding

            self.image, self.text = ImageEmbedding(folder), TextEmbedding(folder)
        else:
            from fastembed import ImageEmbedding, TextEmbedding

            cpu = ["CPUExecutionProvider"]
            self.image = ImageEmbedding(NAME, specific_model_path=str(folder), providers=cpu)
            self.text = TextEmbedding(NAME, specific_model_path=str(folder), providers=cpu)

    def many(self, kind: str, items: list, bs: int) -> np.ndarray:
        return np.stack(list((self.image if kind == "image" else self.text).embed(items, batch_size=bs)))


def worker(a) -> None:
    photos = [str(p) for p in common.photos(a.images)]
    texts = common.sentences(a.texts)
    t0 = time.perf_counter()
    system = System(a.worker, Path(a.model))
    info = {"system": a.worker, "load_s": time.perf_counter() - t0}

    def reply(obj: dict) -> None:
        sys.stdout.write(common.REPLY + json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply(info)
    cursor = {"image": 0, "text": 0}
    vectors = {}
    for line in sys.stdin:
        request = json.loads(line)
        op, kind = request["op"], request.get("kind")
        items = photos if kind == "image" else texts
        if op == "throughput":
            bs = request["bs"]
            system.many(kind, items[: max(bs, 2)], bs)  # warm-up at this batch size
            t = time.perf_counter()
            vectors[kind] = system.many(kind, items, bs)
            reply({"rate": len(items) / (time.perf_counter() - t)})
        elif op == "latency":
            ms = []
            for _ in range(request["n"]):
                item = items[cursor[kind] % len(items)]
                cursor[kind] += 1
                t = time.perf_counter()
                system.many(kind, [item], 1)
                ms.append((time.perf_counter() - t) * 1e3)
            reply({"ms": ms})
        elif op == "finish":
            for k, v in vectors.items():
                np.save(Path(a.out) / f"published_{a.worker}_{k}.npy", np.asarray(v, np.float32))
            reply({"peak_rss_mb": common.peak_rss_mb()})
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny widths and few inputs: check the script runs")
    ap.add_argument("--images", type=int, default=None, help="1-4 MP JPEGs (default 128; tiny 8)")
    ap.add_argument("--texts", type=int, default=None, help="sentences (default 2048; tiny 64)")
    ap.add_argument("--text-batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; tiny 1)")
    ap.add_argument("--calls", type=int, default=None, help="single-item calls per system, kind and round")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--out", type=Path, default=common.OUT)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    tiny = a.tiny
    a.images = a.images or (8 if tiny else 128)
    a.texts = a.texts or (64 if tiny else 2048)
    a.rounds = a.rounds or (1 if tiny else 5)
    a.calls = a.calls or (3 if tiny else 20)
    if a.worker:
        worker(a)
        return

    folder = model_folder("tiny" if tiny else "base")
    common.photos(a.images)  # made here once, not by both workers at the same time
    machine = common.machine()
    script = Path(__file__).resolve()
    args = ["--model", str(folder), "--images", str(a.images), "--texts", str(a.texts), "--out", str(a.out)]
    workers = {s: common.Worker(script, ["--worker", s, *args]) for s in SYSTEMS}
    infos = {s: w.ready() for s, w in workers.items()}
    rates = {s: {"image": [], "text": []} for s in SYSTEMS}
    lat = {s: {"image": [], "text": []} for s in SYSTEMS}
    for r in range(a.rounds):
        for kind, bs in (("image", 32), ("text", a.text_batch)):
            for s, w in workers.items():
                rates[s][kind].append(w.ask(op="throughput", kind=kind, bs=bs)["rate"])
                lat[s][kind].append(w.ask(op="latency", kind=kind, n=a.calls)["ms"])
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(
            f"{s} {rates[s]['image'][-1]:.2f} img/s {rates[s]['text'][-1]:.1f} texts/s" for s in SYSTEMS),
            file=sys.stderr, flush=True)
    for s, w in workers.items():
        infos[s].update(w.ask(op="finish"))
    agreement = {}
    for kind in ("image", "text"):
        ours, theirs = (np.load(a.out / f"published_{s}_{kind}.npy") for s in SYSTEMS)
        agreement[kind] = float(np.min(np.sum(ours * theirs, axis=1)))

    def ratio(kind: str, key: dict) -> float:
        return float(np.median(np.asarray(key["fastclip"][kind]) / np.asarray(key["fastembed"][kind])))

    lat_p50 = {s: {k: [float(np.median(x)) for x in lat[s][k]] for k in lat[s]} for s in SYSTEMS}
    rows = []
    for s in SYSTEMS:
        rows.append([s, f"{np.median(rates[s]['image']):.2f}", f"{np.median(rates[s]['text']):.1f}",
                     f"{np.median(np.concatenate(lat[s]['image'])):.1f}",
                     f"{np.median(np.concatenate(lat[s]['text'])):.2f}", f"{infos[s]['load_s']:.1f}",
                     f"{infos[s]['peak_rss_mb']:.0f}"])
    size = "tiny widths (a run check, not a result)" if tiny else "SigLIP 2 base widths, random weights"
    md = [f"### Published SigLIP 2 files (transformers.js layout): fastclip vs fastembed, {size}\n\n",
          common.machine_md(machine), f"- load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n",
          f"- {a.images} JPEGs of 1-4 MP at batch 32, {a.texts} sentences at batch {a.text_batch}, {a.rounds} "
          f"interleaved rounds, {a.calls} single-item calls per kind and round\n\n",
          common.md_table(["system", "img/s bs=32", f"texts/s bs={a.text_batch}", "image p50 ms", "text p50 ms",
                           "load s", "peak RSS MB"], rows),
          f"\nfastclip / fastembed (median of same-round ratios): images {ratio('image', rates):.2f}x, texts "
          f"{ratio('text', rates):.2f}x; latency image {ratio('image', lat_p50):.2f}x, text {ratio('text', lat_p50):.2f}x "
          f"(< 1: faster). Same vectors: min cosine fastclip vs fastembed, images {agreement['image']:.6f}, texts "
          f"{agreement['text']:.6f}.\n"]
    text = "".join(md)
    print(text)
    # A tiny run checks the script; its numbers go to out/ (not committed), never over the reported ones.
    results, stem = (a.out, "published_tiny") if tiny else (a.results, "published")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.md").write_text(text)
    (results / f"{stem}.json").write_text(json.dumps(
        {"machine": machine, "size": "tiny" if tiny else "base", "rates": rates, "latency_ms": lat, "infos": infos,
         "min_cosine_fastclip_vs_fastembed": agreement}, indent=1))


if __name__ == "__main__":
    main()

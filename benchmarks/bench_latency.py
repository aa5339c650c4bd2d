"""Single-item latency (a web request embeds one photo or one query) and the first call after loading:
fastclip vs fastembed on the same ViT-B/32 ONNX files, plus the same fastclip code from another checkout
(default /work/main) to show what a change did. Optionally re-measures throughput (images bs=32 exact,
texts bs=256) for this checkout vs the other one, so a latency change is seen not to cost throughput.

Every system runs in its own fresh interpreter and stays loaded; the parent asks them in turn, round
after round (common.Worker): latency is the p50 over all calls, ratios are medians of same-round p50
ratios. The first call is measured in --first fresh sets of workers started one at a time.

    python benchmarks/bench_latency.py                        # latency + first call
    python benchmarks/bench_latency.py --throughput --rounds 5
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

SYSTEMS = ("fastclip", "fastclip-base", "fastembed")  # also: fastclip-spin (a lever)
FIRST_TEXT = "a photo of a cat sitting on a wooden table"


class System:
    def __init__(self, name: str, model: Path):
        if name.startswith("fastclip"):
            from fastclip import ImageEmbedding, TextEmbedding

            options = {}
            if name == "fastclip-spin":  # onnxruntime spin-waiting forced on beside the decode threads
                from fastclip import Tuning

                options["tuning"] = Tuning(allow_spinning=True)
            self.image = ImageEmbedding(model, **options)
            self.text = TextEmbedding(model)
        else:
            from fastembed import ImageEmbedding, TextEmbedding

            cpu = ["CPUExecutionProvider"]
            self.image = ImageEmbedding("Qdrant/clip-ViT-B-32-vision", specific_model_path=str(model / "vision"),
                                        providers=cpu)
            self.text = TextEmbedding("Qdrant/clip-ViT-B-32-text", specific_model_path=str(model / "text"),
                                      providers=cpu)

    def one(self, kind: str, item) -> np.ndarray:
        """What a request handler does: embed one item, take its vector."""
        return next(iter((self.image if kind == "image" else self.text).embed([item])))

    def many(self, kind: str, items: list, bs: int) -> np.ndarray:
        return np.stack(list((self.image if kind == "image" else self.text).embed(items, batch_size=bs)))


def worker(a) -> None:
    photos = [str(p) for p in common.photos(a.photos)[: a.images]]
    texts = common.sentences(a.texts)
    t0 = time.perf_counter()
    system = System(a.worker, a.model)
    info = {"system": a.worker, "load_s": time.perf_counter() - t0}
    t = time.perf_counter()
    system.one("image", photos[0])
    info["first_image_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    system.one("text", FIRST_TEXT)
    info["first_text_ms"] = (time.perf_counter() - t) * 1e3
    import fastclip

    info["fastclip_from"] = str(Path(fastclip.__file__).parent) if a.worker.startswith("fastclip") else None

    def reply(obj: dict) -> None:
        sys.stdout.write(common.REPLY + json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply(info)
    cursor = {"image": 0, "text": 0}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "latency":
            kind, items = request["kind"], photos if request["kind"] == "image" else texts
            ms = []
            for _ in range(request["n"]):
                item = items[cursor[kind] % len(items)]
                cursor[kind] += 1
                t = time.perf_counter()
                system.one(kind, item)
                ms.append((time.perf_counter() - t) * 1e3)
            reply({"ms": ms})
        elif op == "throughput":
            kind, bs = request["kind"], request["bs"]
            items = photos if kind == "image" else texts
            system.many(kind, items[: max(bs, 2)], bs)  # warm-up at this batch size
            t = time.perf_counter()
            system.many(kind, items, bs)
            reply({"rate": len(items) / (time.perf_counter() - t)})
        elif op == "finish":
            reply({"peak_rss_mb": common.peak_rss_mb()})
            return


def start(name: str, a, script: Path) -> common.Worker:
    args = ["--worker", name, "--model", str(a.model), "--photos", str(a.photos), "--images", str(a.images),
            "--texts", str(a.texts)]
    root = Path(a.base_root) if name == "fastclip-base" else common.ROOT
    return common.Worker(script, args, root=root)


def median_ratio(a: list[float], b: list[float]) -> float:
    return float(np.median(np.asarray(a) / np.asarray(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=common.MODEL)
    ap.add_argument("--photos", type=int, default=240)
    ap.add_argument("--images", type=int, default=240, help="photos used (latency cycles through them)")
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--base-root", default="/work/main", help="checkout whose fastclip is 'fastclip-base'")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="single-item calls per system, kind and round")
    ap.add_argument("--first", type=int, default=3, help="fresh worker sets for the first-call figures (0: skip)")
    ap.add_argument("--throughput", action="store_true", help="also time images bs=32 and texts bs=256")
    ap.add_argument("--out", type=Path, default=common.OUT)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return

    machine = common.machine()
    script = Path(__file__).resolve()
    systems = a.systems.split(",")
    if "fastclip-base" in systems and not (Path(a.base_root) / "fastclip").is_dir():
        systems.remove("fastclip-base")
    workers = {s: start(s, a, script) for s in systems}
    infos = {s: w.ready() for s, w in workers.items()}
    lat = {s: {"image": [], "text": []} for s in systems}  # per round: list of ms
    for r in range(a.rounds):
        for kind in ("image", "text"):
            for s, w in workers.items():
                lat[s][kind].append(w.ask(op="latency", kind=kind, n=a.calls)["ms"])
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(
            f"{s} {np.median(lat[s]['image'][-1]):.1f}/{np.median(lat[s]['text'][-1]):.2f} ms" for s in systems),
            file=sys.stderr, flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    # Saved before the slower phases, so an interrupted run keeps its latency figures.
    (a.out / "latency_partial.json").write_text(json.dumps({"machine": machine, "latency_ms": lat}, indent=1))
    rates = {s: {"image": [], "text": []} for s in systems}
    if a.throughput:
        for r in range(a.rounds):
            for kind, bs in (("image", 32), ("text", 256)):
                for s, w in workers.items():
                    rates[s][kind].append(w.ask(op="throughput", kind=kind, bs=bs)["rate"])
            print(f"throughput round {r + 1}/{a.rounds}: " + ", ".join(
                f"{s} {rates[s]['image'][-1]:.1f} img/s {rates[s]['text'][-1]:.0f} texts/s" for s in systems),
                file=sys.stderr, flush=True)
    for s, w in workers.items():
        infos[s].update(w.ask(op="finish"))
    firsts = {s: [] for s in systems}
    for i in range(a.first):
        for s in systems:  # one at a time: a worker's first call does not compete with another's loading
            w = start(s, a, script)
            firsts[s].append(w.ready())
            w.ask(op="finish")
        print(f"first-call set {i + 1}/{a.first} done", file=sys.stderr, flush=True)

    ref = "fastembed" if "fastembed" in systems else systems[0]
    md = [f"### Single-item latency, ViT-B/32 (same ONNX files), {a.rounds} interleaved rounds x {a.calls} calls\n\n",
          common.machine_md(machine), f"- load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n\n"]
    header = ["system", "image p50 ms", "text p50 ms", f"image × {ref} (p50, median of rounds)",
              f"text × {ref}", "first image call ms (median)", "first text call ms (median)", "load s"]
    rows = []
    for s in systems:
        img = [np.median(x) for x in lat[s]["image"]]
        txt = [np.median(x) for x in lat[s]["text"]]
        img_ref = [np.median(x) for x in lat[ref]["image"]]
        txt_ref = [np.median(x) for x in lat[ref]["text"]]
        fi = [f["first_image_ms"] for f in firsts[s]]
        ft = [f["first_text_ms"] for f in firsts[s]]
        rows.append([s, f"{np.median(np.concatenate(lat[s]['image'])):.2f}", f"{np.median(np.concatenate(lat[s]['text'])):.2f}",
                     f"{median_ratio(img, img_ref):.3f}", f"{median_ratio(txt, txt_ref):.3f}",
                     f"{np.median(fi):.1f}" if fi else "-", f"{np.median(ft):.2f}" if ft else "-",
                     f"{infos[s]['load_s']:.1f}"])
    md.append(common.md_table(header, rows))
    md.append("\n(ratios < 1: faster than " + ref + "; 'fastclip-base' is the fastclip of " + a.base_root + ")\n")
    if a.throughput:
        md.append(f"\n#### Throughput, same run ({a.images} photos bs=32, {a.texts} texts bs=256; median of {a.rounds})\n\n")
        base = "fastclip-base" if "fastclip-base" in systems else ref
        rows = [[s, f"{np.median(rates[s]['image']):.1f}", f"{np.median(rates[s]['text']):.0f}",
                 f"{median_ratio(rates[s]['image'], rates[base]['image']):.3f}",
                 f"{median_ratio(rates[s]['text'], rates[base]['text']):.3f}"] for s in systems]
        md.append(common.md_table(["system", "img/s bs=32", "texts/s bs=256", f"images × {base}", f"texts × {base}"], rows))
    text = "".join(md)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "latency.md").write_text(text)
    (a.out / "latency.json").write_text(json.dumps({"machine": machine, "latency_ms": lat, "rates": rates,
                                                    "first": firsts, "infos": infos}, indent=1))


if __name__ == "__main__":
    main()

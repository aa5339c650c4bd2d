"""Text embedding throughput: fastclip vs fastembed vs PyTorch (open_clip, transformers), same weights.

Each system runs in its own subprocess (clean peak RSS) over the same deterministic sentences of
3-20 words, at each batch size after a warm-up batch. All systems stay loaded and are timed in turn,
--rounds times (common.interleave): throughput is the median over rounds, the ratio to fastembed the
median of same-round ratios. The time per text is then split into tokenization and model (one batch
of --split-batch texts).

    python benchmarks/bench_text.py
    python benchmarks/bench_text.py --texts 512 --batch-sizes 256 --systems fastclip,fastembed
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SYSTEMS = ("fastclip", "fastclip-serial", "fastclip-unbucketed", "fastclip-int8", "fastembed", "open_clip",
           "transformers")
LABELS = {
    "fastclip": "fastclip (default)",
    "fastclip-serial": "fastclip, one session, runs one after another (concurrent_runs=1)",
    "fastclip-unbucketed": "fastclip, batches in input order (no length bucketing)",
    "fastclip-int8": "fastclip int8 text tower",
    "fastembed": "fastembed (same ONNX fp32)",
    "open_clip": "PyTorch open_clip (2 threads)",
    "transformers": "PyTorch transformers CLIPModel (2 threads)",
}


class FastClip:
    def __init__(self, model, bucket=True, precision=None, run_rows=None, concurrent_runs=None):
        from fastclip import TextEmbedding, Tuning

        tuning = Tuning(text_bucket_window=8 if bucket else 0,  # 0: input-order batches, no sorting
                        text_run_rows=run_rows or Tuning.text_run_rows, concurrent_runs=concurrent_runs)
        self.emb = TextEmbedding(model, precision=precision, tuning=tuning)
        self.spec = self.emb.spec

    def embed(self, texts, bs):
        return np.stack(list(self.emb.embed(texts, batch_size=bs)))

    def tokenize(self, texts):
        return self.emb._feeds(list(texts), 0, True)

    def model(self, feeds):
        return self.emb._tower.session.run([self.spec.output_name], feeds)[0]


class FastEmbed:
    def __init__(self, model):
        from fastembed import TextEmbedding

        self.emb = TextEmbedding("Qdrant/clip-ViT-B-32-text", specific_model_path=str(Path(model) / "text"),
                                 providers=["CPUExecutionProvider"])
        self.inner = self.emb.model

    def embed(self, texts, bs):
        return np.stack(list(self.emb.embed(texts, batch_size=bs)))

    def tokenize(self, texts):
        enc = self.inner.tokenizer.encode_batch(texts)
        return (np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64))

    def model(self, ids_mask):
        ids, mask = ids_mask
        names = [i.name for i in self.inner.model.get_inputs()]
        feeds = {"input_ids": ids}
        if "attention_mask" in names:
            feeds["attention_mask"] = mask
        return self.inner.model.run(None, feeds)[0]


class Torch:
    def __init__(self, which):
        import torch

        torch.set_num_threads(2)
        self.torch = torch
        self.which = which
        net, _, tok = common.open_clip_model()
        self.tok = tok
        if which == "open_clip":
            self.net = net
        else:
            del net
            self.net = common.hf_model()
            from transformers import CLIPTokenizerFast

            self.hf_tok = CLIPTokenizerFast.from_pretrained(str(common.ROOT / "tests/fixtures/clip-tokenizer"))

    def tokenize(self, texts):
        if self.which == "open_clip":
            return self.tok(texts)  # open_clip pads every text to 77 tokens
        return self.hf_tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")

    def model(self, ids):
        with self.torch.inference_mode():
            if self.which == "open_clip":
                return self.net.encode_text(ids)
            out = self.net.get_text_features(**ids)
            return getattr(out, "pooler_output", out)

    def embed(self, texts, bs):
        return common.torch_embed(texts, bs, self.tokenize, self.model)


def make(system, model):
    if system == "fastclip":
        return FastClip(model)
    if system == "fastclip-serial":
        return FastClip(model, concurrent_runs=1)
    if system == "fastclip-unbucketed":
        return FastClip(model, bucket=False)
    if system == "fastclip-int8":
        return FastClip(model, precision="int8")
    if system == "fastembed":
        return FastEmbed(model)
    if system in ("open_clip", "transformers"):
        return Torch(system)
    raise SystemExit(f"unknown system {system}")


def worker(a) -> None:
    texts = common.sentences(a.texts)
    t0 = time.perf_counter()
    s = make(a.worker, a.model)
    info = {"system": a.worker, "load_s": time.perf_counter() - t0, "texts": len(texts)}

    def finish() -> dict:
        res = {}
        k = min(a.split_batch, len(texts))
        batch = texts[:k]
        t = time.perf_counter()
        for _ in range(3):
            ids = s.tokenize(batch)
        res["tokenize_ms"] = (time.perf_counter() - t) / 3 / k * 1e3
        res["model_ms"] = common.best_seconds(lambda: s.model(ids)) / k * 1e3
        return res

    common.serve(s.embed, texts, finish, info, a.save_vectors)


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def report(results, a, machine, cos) -> str:
    bss = [str(b) for b in a.batch_sizes]
    main = str(a.report_batch if a.report_batch in a.batch_sizes else a.batch_sizes[-1])
    header = (["system"] + [f"texts/s bs={b} (median of {a.rounds})" for b in bss]
              + [f"× fastembed (bs={main})", "tokenize ms/text", f"model ms/text (one input-order batch of {a.split_batch})",
                 "peak RSS MB", "min cosine to fastclip", "min cosine to open_clip torch"])
    rows = []
    for s, r in results.items():
        tp = r["throughput"]
        ratio = r.get("ratio_fastembed", {}).get(main, (None,))[0]
        rows.append([LABELS.get(s, s)] + [fmt(tp.get(b)) for b in bss]
                    + [fmt(ratio, 2) + "×" if ratio else "-", fmt(r["tokenize_ms"], 3), fmt(r["model_ms"], 2),
                       f"{r['peak_rss_mb']:.0f}", fmt(cos["fastclip"].get(s), 7), fmt(cos["open_clip"].get(s), 7)])
    return (f"### Text: {a.texts} sentences of 3-20 words ({a.torch_texts} for the PyTorch systems), ViT-B/32 text tower (random weights, identical in every system)\n\n"
            + common.machine_md(machine) + "\n" + common.md_table(header, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=common.MODEL)
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--torch-texts", type=int, default=256, help="texts for the (slow) PyTorch systems")
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32, 256])
    ap.add_argument("--report-batch", type=int, default=256)
    ap.add_argument("--split-batch", type=int, default=256)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per system and batch size, interleaved")
    ap.add_argument("--out", type=Path, default=common.OUT)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--save-vectors", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    machine = common.machine()
    model = common.model_folder(a.model) if a.model == common.MODEL else a.model
    a.out.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve()
    base = ["--model", str(model), "--texts", str(a.texts), "--batch-sizes", ",".join(map(str, a.batch_sizes)),
            "--split-batch", str(a.split_batch)]
    worker_args = {}
    for s in a.systems.split(","):
        worker_args[s] = ["--worker", s, *base, "--save-vectors", str(a.out / f"text_vectors_{s}.npy")]
        if s in ("open_clip", "transformers"):
            worker_args[s] += ["--texts", str(min(a.torch_texts, a.texts))]
    results = common.compare(script, worker_args, a.batch_sizes, a.rounds)
    vec = {s: np.load(a.out / f"text_vectors_{s}.npy") for s in results}
    cos = {"fastclip": {}, "open_clip": {}}
    for ref in cos:
        if ref in vec:
            cos[ref] = {s: float(common.cosine_rows(v[: len(vec[ref])], vec[ref][: len(v)]).min()) for s, v in vec.items()}
    md = report(results, a, machine, cos)
    print(md)
    (a.out / "text.md").write_text(md)
    from bench_images import plot

    plot(results, a, a.out / "text_throughput.png",
         f"Text embedding, ViT-B/32, {machine['cpu']} ({machine['cores']} cores)", unit="texts/s", labels=LABELS)
    if a.json:
        a.json.write_text(json.dumps({"machine": machine, "results": results, "cosine": cos}, indent=1))


if __name__ == "__main__":
    main()

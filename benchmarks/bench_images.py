"""Image embedding throughput: fastclip (exact / fast / fastest) vs fastembed vs PyTorch, one run, same weights.

Every system runs in its own fresh subprocess (clean peak RSS) and embeds the same JPEG files from disk at
each batch size (after one warm-up batch). All systems stay loaded and are timed in turn, --rounds times
(common.interleave): img/s is the median over rounds, the ratio to fastembed the median of same-round
ratios. Then each system's time per image is split into decode+preprocess (one image at a time, serial)
and model (one batch of --split-batch preprocessed images). The "limit"
of exact mode is 1 / (exact full-decode preprocessing + fp32 model) per image, measured in the same run.

    python benchmarks/bench_images.py                      # all systems, table + plot
    python benchmarks/bench_images.py --images 32 --batch-sizes 8 --systems fastclip-exact,fastembed
    python benchmarks/bench_images.py --levers             # fastclip threading / session-option variants
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

SYSTEMS = ("fastclip-exact", "fastclip-fast", "fastclip-fastest", "fastembed", "open_clip", "transformers")
LABELS = {
    "fastclip-exact": "fastclip exact (default)",
    "fastclip-fast": "fastclip fast (fast=True)",
    "fastclip-fastest": "fastclip fastest (fast='max', int8)",
    "fastembed": "fastembed (same ONNX fp32)",
    "open_clip": "PyTorch open_clip (2 threads)",
    "transformers": "PyTorch transformers CLIPModel + CLIPImageProcessor",
}


# ------------------------------------------------------------------------------------ ORT session options

def ort_options(spec: str):
    """'spin=0,mode=par,inter=1,arena=0,threads=1' -> onnxruntime.SessionOptions (levers only)."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.log_severity_level = 3
    for item in filter(None, spec.split(",")):
        k, v = item.split("=")
        if k == "spin":
            o.add_session_config_entry("session.intra_op.allow_spinning", v)
            o.add_session_config_entry("session.inter_op.allow_spinning", v)
        elif k == "mode":
            o.execution_mode = ort.ExecutionMode.ORT_PARALLEL if v == "par" else ort.ExecutionMode.ORT_SEQUENTIAL
        elif k == "inter":
            o.inter_op_num_threads = int(v)
        elif k == "threads":
            o.intra_op_num_threads = int(v)
        elif k == "arena":
            o.enable_cpu_mem_arena = v == "1"
        elif k == "dbb":  # dynamic block scheduling of parallel loops (helps when threads get preempted)
            o.add_session_config_entry("session.dynamic_block_base", v)
        elif k == "pattern":
            o.enable_mem_pattern = v == "1"
        else:
            raise ValueError(f"unknown ORT option {k}")
    return o


# -------------------------------------------------------------------------------------------- systems

class System:
    """embed(paths, bs) -> (N, dim) array; preprocess_one(path) -> (3,S,S); model(batch) -> vectors."""

    def embed(self, paths, bs):
        raise NotImplementedError


class FastClip(System):
    def __init__(self, model, fast=False, precision=None, workers=None, threads=None, ort=None, spin=None):
        from fastclip import ImageEmbedding, Tuning
        from fastclip.images import ImagePreprocessor

        if ort is not None:
            # Lever experiments: fastclip opens its session with these options (open_tower then applies
            # its own settings on top: optimization level, threads= when given, log level).
            import types

            import onnxruntime as rt

            import fastclip.session as fs

            fs.ort = types.SimpleNamespace(**{k: getattr(rt, k) for k in dir(rt) if not k.startswith("__")})
            fs.ort.SessionOptions = lambda: ort_options(ort)
        # spin: lever experiments force onnxruntime's intra-op spin-waiting on or off (None: fastclip's choice)
        tuning = Tuning(decode_workers=workers, allow_spinning=None if spin is None else spin == "on")
        self.emb = ImageEmbedding(model, fast=fast, precision=precision, threads=threads, tuning=tuning)
        self.pre = ImagePreprocessor(self.emb.spec, fast=fast)
        self.session = self.emb._tower.session
        self.inp, self.outp = self.emb.spec.input_name, self.emb.spec.output_name
        self.precision = self.emb.precision
        self.workers = self.emb.workers

    def embed(self, paths, bs):
        return np.stack(list(self.emb.embed(paths, batch_size=bs)))

    def preprocess_one(self, path):
        return self.pre(path, 0)

    def model(self, batch):
        return self.session.run([self.outp], {self.inp: batch})[0]


class FastEmbed(System):
    def __init__(self, model):
        from fastembed import ImageEmbedding

        self.emb = ImageEmbedding("Qdrant/clip-ViT-B-32-vision", specific_model_path=str(Path(model) / "vision"),
                                  providers=["CPUExecutionProvider"])
        self.inner = self.emb.model

    def embed(self, paths, bs):
        return np.stack(list(self.emb.embed([str(p) for p in paths], batch_size=bs)))

    def preprocess_one(self, path):
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(self.inner.processor([img]))[0]

    def model(self, batch):
        return self.inner.model.run(None, self.inner._build_onnx_input(batch))[0]


class OpenClip(System):
    def __init__(self, model):
        import torch

        torch.set_num_threads(2)
        self.torch = torch
        self.net, self.transform, _ = common.open_clip_model()

    def preprocess_one(self, path):
        from PIL import Image

        with Image.open(path) as img:
            return self.transform(img)

    def model(self, batch):
        with self.torch.inference_mode():
            return self.net.encode_image(batch if isinstance(batch, self.torch.Tensor) else self.torch.from_numpy(batch))

    def embed(self, paths, bs):
        return common.torch_embed(paths, bs, lambda chunk: self.torch.stack([self.preprocess_one(p) for p in chunk]),
                                  self.model)


class Transformers(System):
    def __init__(self, model):
        import torch

        torch.set_num_threads(2)
        self.torch = torch
        self.net = common.hf_model()
        from transformers import CLIPImageProcessor

        self.processor = CLIPImageProcessor()  # OpenAI CLIP's settings; transformers 5 default backend

    def _pixels(self, paths):
        from PIL import Image

        imgs = [Image.open(p) for p in paths]
        try:
            return self.processor(images=imgs, return_tensors="pt")["pixel_values"]
        finally:
            for im in imgs:
                im.close()

    def preprocess_one(self, path):
        return self._pixels([path])[0]

    def model(self, batch):
        with self.torch.inference_mode():
            x = batch if isinstance(batch, self.torch.Tensor) else self.torch.from_numpy(batch)
            out = self.net.get_image_features(pixel_values=x)
            return getattr(out, "pooler_output", out)

    def embed(self, paths, bs):
        return common.torch_embed(paths, bs, self._pixels, self.model)


def make(system: str, model: Path, extra: dict) -> System:
    if system == "fastclip-exact":
        return FastClip(model, **extra)
    if system == "fastclip-fast":
        return FastClip(model, fast=True, **extra)
    if system == "fastclip-fastest":
        return FastClip(model, fast="max", precision="int8", **extra)
    if system == "fastembed":
        return FastEmbed(model)
    if system == "open_clip":
        return OpenClip(model)
    if system == "transformers":
        return Transformers(model)
    raise SystemExit(f"unknown system {system}")


# ---------------------------------------------------------------------------------------------- worker

def worker(a) -> None:
    paths = common.photos(a.photos)[: a.images]
    extra = {}
    if a.workers is not None:
        extra["workers"] = a.workers
    if a.threads is not None:
        extra["threads"] = a.threads
    if a.ort:
        extra["ort"] = a.ort
    if a.spin:
        extra["spin"] = a.spin
    t0 = time.perf_counter()
    sysm = make(a.worker, a.model, extra)
    info = {"system": a.worker, "load_s": time.perf_counter() - t0, "rss_loaded_mb": common.rss_mb(),
            "images": len(paths), "workers": getattr(sysm, "workers", None), "precision": getattr(sysm, "precision", None)}

    def finish() -> dict:
        res = {}
        if a.split:
            # decode + preprocess, one image at a time, on one thread
            n = min(a.split_images, len(paths))
            sysm.preprocess_one(paths[0])
            t = time.perf_counter()
            pix = [sysm.preprocess_one(p) for p in paths[:n]]
            res["preprocess_ms"] = (time.perf_counter() - t) / n * 1e3
            # model alone on one preprocessed batch (best of 3)
            k = min(a.split_batch, n)
            batch = np.stack([np.asarray(p, np.float32) for p in pix[:k]])
            if a.worker in ("open_clip", "transformers"):
                import torch

                batch = torch.from_numpy(batch)
            res["model_ms"] = common.best_seconds(lambda: sysm.model(batch)) / k * 1e3
            res["split_batch"] = k
        return res

    common.serve(sysm.embed, paths, finish, info, a.save_vectors)


# -------------------------------------------------------------------------------------------- report

def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def report(results: dict, a, machine: dict, cos: dict) -> str:
    bss = [str(b) for b in a.batch_sizes]
    main_bs = str(a.report_batch if a.report_batch in a.batch_sizes else a.batch_sizes[-1])
    md = [f"### Images: {a.images} JPEGs of 1-4 MP from disk ({a.torch_images} for the PyTorch systems), "
          "ViT-B/32 (random weights, identical in every system)\n\n",
          common.machine_md(machine), "\n"]
    header = ["system"] + [f"img/s bs={b} (median of {a.rounds})" for b in bss] + [f"× fastembed (bs={main_bs})", "decode+preprocess ms/img",
                                                              f"model ms/img (bs={a.split_batch})", "peak RSS MB",
                                                              "min cosine to exact", "min cosine to open_clip torch"]
    rows = []
    for s, r in results.items():
        tp = r["throughput"]
        ratio = r.get("ratio_fastembed", {}).get(main_bs, (None,))[0]
        rows.append([LABELS.get(s, s)] + [fmt(tp.get(b)) for b in bss]
                    + [fmt(ratio, 2) + "×" if ratio else "-", fmt(r.get("preprocess_ms")), fmt(r.get("model_ms")),
                       f"{r['peak_rss_mb']:.0f}", fmt(cos.get("exact", {}).get(s), 7), fmt(cos.get("open_clip", {}).get(s), 7)])
    md.append(common.md_table(header, rows))
    ex = results.get("fastclip-exact")
    if ex and "preprocess_ms" in ex:
        limit = 1e3 / (ex["preprocess_ms"] + ex["model_ms"])
        best_bs = max(ex["throughput"], key=lambda b: ex["throughput"][b])
        md.append(f"\nExact-mode limit = 1 / (full-decode preprocessing {ex['preprocess_ms']:.1f} ms + fp32 model "
                  f"{ex['model_ms']:.1f} ms) = **{limit:.1f} img/s**; exact mode reaches "
                  f"{ex['throughput'][main_bs]:.1f} img/s at bs={main_bs} = **{100 * ex['throughput'][main_bs] / limit:.0f} %** "
                  f"of it (best: {ex['throughput'][best_bs]:.1f} img/s at bs={best_bs}, "
                  f"{100 * ex['throughput'][best_bs] / limit:.0f} %). fastclip default: {ex.get('workers')} decode worker thread(s).\n")
    return "".join(md)


def plot(results: dict, a, path: Path, title: str, unit: str = "img/s", labels: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for s, r in results.items():
        xs = [int(b) for b in r["throughput"]]
        ax.plot(xs, [r["throughput"][str(b)] for b in xs], marker="o", label=(labels or LABELS).get(s, s))
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(b) for b in a.batch_sizes], [str(b) for b in a.batch_sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


LEVERS = [  # (name, extra worker args). fastclip's default: min(4, cpu count) decode workers (2 here),
    # onnxruntime spin-waiting off when decode workers run beside it, except for int8
    ("workers=0 (decode inline, no overlap)", ["--workers", "0"]),
    ("workers=1", ["--workers", "1"]),
    ("workers=2 (default here)", ["--workers", "2"]),
    ("workers=4", ["--workers", "4"]),
    ("workers=2, ORT intra-op spinning forced on", ["--workers", "2", "--spin", "on"]),
    ("workers=2, ORT intra-op spinning forced off", ["--workers", "2", "--spin", "off"]),
    ("workers=2, ORT 1 intra-op thread", ["--workers", "2", "--threads", "1"]),
    ("workers=2, ORT no CPU memory arena", ["--workers", "2", "--ort", "arena=0"]),
    ("workers=2, ORT parallel execution mode", ["--workers", "2", "--ort", "mode=par"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=common.MODEL, help="fastclip export folder (made if missing)")
    ap.add_argument("--photos", type=int, default=240, help="photos generated/cached in benchmarks/out/photos")
    ap.add_argument("--images", type=int, default=240, help="images embedded per batch size")
    ap.add_argument("--torch-images", type=int, default=96, help="images for the (slow) PyTorch systems")
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--report-batch", type=int, default=32, help="batch size of the ratio column")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per system and batch size, interleaved")
    ap.add_argument("--split-images", type=int, default=48, help="images timed for the preprocessing split")
    ap.add_argument("--split-batch", type=int, default=32, help="batch size timed for the model split")
    ap.add_argument("--levers", action="store_true", help="compare fastclip threading/session variants instead")
    ap.add_argument("--lever-modes", default="fastclip-exact,fastclip-fast,fastclip-fastest")
    ap.add_argument("--out", type=Path, default=common.OUT)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    # worker mode (internal)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ort", help=argparse.SUPPRESS)
    ap.add_argument("--spin", choices=("on", "off"), help=argparse.SUPPRESS)
    ap.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--save-vectors", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        worker(a)
        return

    machine = common.machine()
    common.photos(a.photos)
    model = common.model_folder(a.model) if a.model == common.MODEL else a.model
    a.out.mkdir(parents=True, exist_ok=True)
    base = ["--model", str(model), "--photos", str(a.photos), "--images", str(a.images),
            "--batch-sizes", ",".join(map(str, a.batch_sizes)), "--split-images", str(a.split_images),
            "--split-batch", str(a.split_batch)]
    script = Path(__file__).resolve()

    if a.levers:
        rows = []
        raw = {}
        for mode in a.lever_modes.split(","):
            levers = common.compare(script, {name: ["--worker", mode, *base, *extra] for name, extra in LEVERS},
                                    a.batch_sizes, a.rounds)
            for name, r in levers.items():
                raw[f"{mode} | {name}"] = r
                rows.append([mode, name] + [fmt(r["throughput"][str(b)]) for b in a.batch_sizes] + [f"{r['peak_rss_mb']:.0f}"])
        md = (f"### fastclip levers (img/s, median of {a.rounds} interleaved rounds)\n\n" + common.machine_md(machine) + "\n"
              + common.md_table(["mode", "variant"] + [f"bs={b}" for b in a.batch_sizes] + ["peak RSS MB"], rows))
        print(md)
        (a.out / "levers_images.md").write_text(md)
        if a.json:
            a.json.write_text(json.dumps({"machine": machine, "levers": raw}, indent=1))
        return

    worker_args = {}
    for s in a.systems.split(","):
        worker_args[s] = ["--worker", s, *base, "--split", "--save-vectors", str(a.out / f"vectors_{s}.npy")]
        if s in ("open_clip", "transformers"):
            worker_args[s] += ["--images", str(min(a.torch_images, a.images))]
    results = common.compare(script, worker_args, a.batch_sizes, a.rounds)
    vec = {s: np.load(a.out / f"vectors_{s}.npy") for s in results}
    cos = {"exact": {}, "open_clip": {}}
    for ref, key in (("fastclip-exact", "exact"), ("open_clip", "open_clip")):
        if ref in vec:
            for s, v in vec.items():
                n = min(len(v), len(vec[ref]))  # the PyTorch systems embed the first --torch-images only
                cos[key][s] = float(common.cosine_rows(v[:n], vec[ref][:n]).min())
    md = report(results, a, machine, cos)
    print(md)
    png = a.out / "images_throughput.png"
    plot(results, a, png, f"Image embedding, ViT-B/32, {machine['cpu']} ({machine['cores']} cores)")
    (a.out / "images.md").write_text(md)
    if a.json:
        a.json.write_text(json.dumps({"machine": machine, "results": results, "cosine": cos,
                                      "args": {k: str(v) for k, v in vars(a).items()}}, indent=1))
    print(f"wrote {png} and {a.out / 'images.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()

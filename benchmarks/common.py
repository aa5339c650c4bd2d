"""Shared pieces of the benchmarks: inputs (photos, sentences), the benchmark model, the machine, RSS.

Everything generated lands in benchmarks/out/ (gitignored) and is reused by later runs:

* out/photos/      realistic 1-4 MP JPEGs (quality 90) made from scikit-image's real photos;
* out/vit-b-32.pt  a random-init open_clip ViT-B-32 state_dict (seed 0): the ONE set of weights
                   every system of a run uses (the ONNX export is made from this file, open_clip
                   loads it, transformers gets it converted to CLIPModel's layout);
* out/vit-b-32/    the fastclip export of that checkpoint (fp32, fp16, int8 towers).
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PHOTOS = OUT / "photos"
CHECKPOINT = OUT / "vit-b-32.pt"
MODEL = OUT / "vit-b-32"
ARCH = "ViT-B-32"

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina",
               "hubble_deep_field", "camera", "cell", "coins", "colorwheel", "moon")
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)


# --------------------------------------------------------------------------------------------- inputs

def photos(n: int = 240, folder: Path = PHOTOS) -> list[Path]:
    """`n` JPEGs of 1-4 MP (quality 90, 4:2:0), made once and cached.

    Each is a random crop of a scikit-image photo, upscaled (Lanczos) to a random size and aspect
    ratio, with a random brightness/contrast change and mild sensor-like grain, so the files have
    the size and entropy of real camera JPEGs (smooth upscales alone would decode unrealistically fast).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if not missing:
        return paths
    from PIL import Image
    from skimage import data

    sources = {}
    for name in PHOTO_NAMES:
        arr = np.asarray(getattr(data, name)())
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        sources[name] = arr[..., :3].astype(np.uint8)
    print(f"writing {len(missing)} photos into {folder} ...", file=sys.stderr)
    for i in missing:
        rng = np.random.default_rng(1000 + i)
        name = PHOTO_NAMES[i % len(PHOTO_NAMES)]
        src = sources[name]
        h, w, _ = src.shape
        aspect = ASPECTS[rng.integers(len(ASPECTS))]
        # crop of the source with the target aspect, 60-100 % of the largest such crop
        ch = min(h, int(w / aspect))
        cw = min(w, int(ch * aspect))
        ch = int(cw / aspect)
        f = rng.uniform(0.6, 1.0)
        ch, cw = max(16, int(ch * f)), max(16, int(cw * f))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(np.ascontiguousarray(src[y:y + ch, x:x + cw]))
        mp = rng.uniform(1.0, 4.0) * 1e6
        tw = int(round((mp * aspect) ** 0.5))
        th = int(round(tw / aspect))
        img = np.asarray(crop.resize((tw, th), Image.Resampling.LANCZOS), dtype=np.float32)
        img = img * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
        img += rng.normal(0.0, rng.uniform(1.5, 4.0), size=img.shape).astype(np.float32)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(paths[i], quality=90)
    return paths


_ADJ = ("red", "small", "old", "bright", "quiet", "wooden", "blurry", "happy", "tall", "golden", "dark",
        "frozen", "crowded", "empty", "tiny", "ancient", "modern", "colorful", "wet", "shiny", "soft")
_NOUN = ("cat", "dog", "astronaut", "rocket", "cup of coffee", "mountain", "river", "city street", "bicycle",
         "forest", "beach", "child", "car", "bird", "microscope slide", "galaxy", "kitchen", "train",
         "bridge", "flower", "horse", "boat", "painting", "robot", "market", "tree", "window", "guitar")
_VERB = ("sitting on", "running across", "next to", "in front of", "flying over", "hidden behind",
         "floating above", "parked near", "reflected in", "lying under", "walking through", "painted on")
_TAIL = ("at sunset", "in the rain", "on a winter morning", "during a storm", "under neon lights",
         "in black and white", "seen from above", "with a shallow depth of field", "at night",
         "in a museum", "on a busy afternoon", "long exposure", "close up", "in soft morning light")
_LEAD = ("a photo of", "an image of", "a picture showing", "a close-up of", "a painting of", "a blurry photo of",
         "there is", "we saw", "this is", "a drawing of")


def sentences(n: int = 4000, seed: int = 0) -> list[str]:
    """`n` deterministic, varied English sentences of 3 to 20 words."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        target = rng.randint(3, 20)
        words = []
        words += rng.choice(_LEAD).split()
        while len(words) < target:
            part = rng.random()
            if part < 0.35:
                words += ["a", rng.choice(_ADJ)] + rng.choice(_NOUN).split()
            elif part < 0.6:
                words += rng.choice(_VERB).split() + ["the"] + rng.choice(_NOUN).split()
            elif part < 0.8:
                words += rng.choice(_TAIL).split()
            else:
                words += ["and", rng.choice(_ADJ)]
        words = words[:target]
        s = " ".join(words)
        if rng.random() < 0.3:
            s = s[0].upper() + s[1:] + rng.choice((".", "!", "?", "."))
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------- model

def checkpoint(path: Path = CHECKPOINT) -> Path:
    """The random-init open_clip ViT-B-32 weights every system uses (seed 0), saved once."""
    if path.is_file():
        return path
    import torch

    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def model_folder(folder: Path = MODEL, precisions: str = "fp32,fp16,int8") -> Path:
    """The fastclip export of `checkpoint()`, made once with the project's own export CLI."""
    if (folder / "fastclip.json").is_file():
        return folder
    ckpt = checkpoint()
    cmd = [sys.executable, "-m", "fastclip", "export", f"open_clip:{ARCH}", str(folder),
           "--pretrained", str(ckpt), "--precision", precisions, "--overwrite"]
    print("exporting:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return folder


def open_clip_model():
    """(model, preprocess, tokenizer) of open_clip ViT-B-32 with the benchmark weights, eval mode."""
    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(checkpoint()))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(ARCH)


def hf_model():
    """transformers CLIPModel holding the very same weights as `checkpoint()` (converted layout).

    open_clip's ViT-B-32 is OpenAI's architecture with exact GELU; CLIPConfig() defaults are that
    architecture with quick_gelu, so only the activation is changed. Attention in_proj is split into
    q/k/v, projections are transposed. Checked by `python benchmarks/common.py --check-hf`.
    """
    import torch

    from fastclip_export.torchvision_compat import import_torchvision

    import_torchvision()
    from transformers import CLIPConfig, CLIPModel

    sd = torch.load(checkpoint(), map_location="cpu", weights_only=True)
    cfg = CLIPConfig()
    cfg.text_config.hidden_act = "gelu"
    cfg.vision_config.hidden_act = "gelu"
    cfg.text_config.eos_token_id = 49407  # pool at the first end token, as open_clip's argmax does
    model = CLIPModel(cfg).eval()
    new = {}

    def blocks(src: str, dst: str, n: int) -> None:
        for i in range(n):
            s, d = f"{src}.{i}", f"{dst}.{i}"
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
                new[f"{d}.{b}.weight"] = sd[f"{s}.{a}.weight"]
                new[f"{d}.{b}.bias"] = sd[f"{s}.{a}.bias"]
            qw, kw, vw = sd[f"{s}.attn.in_proj_weight"].chunk(3)
            qb, kb, vb = sd[f"{s}.attn.in_proj_bias"].chunk(3)
            for name, w, b in (("q_proj", qw, qb), ("k_proj", kw, kb), ("v_proj", vw, vb)):
                new[f"{d}.self_attn.{name}.weight"] = w
                new[f"{d}.self_attn.{name}.bias"] = b

    v, t = "vision_model", "text_model"
    new[f"{v}.embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    new[f"{v}.embeddings.class_embedding"] = sd["visual.class_embedding"]
    new[f"{v}.embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    for a, b in (("visual.ln_pre", f"{v}.pre_layrnorm"), ("visual.ln_post", f"{v}.post_layernorm"),
                 ("ln_final", f"{t}.final_layer_norm")):
        new[f"{b}.weight"], new[f"{b}.bias"] = sd[f"{a}.weight"], sd[f"{a}.bias"]
    blocks("visual.transformer.resblocks", f"{v}.encoder.layers", cfg.vision_config.num_hidden_layers)
    blocks("transformer.resblocks", f"{t}.encoder.layers", cfg.text_config.num_hidden_layers)
    new["visual_projection.weight"] = sd["visual.proj"].T.contiguous()
    new[f"{t}.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    new[f"{t}.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    new["text_projection.weight"] = sd["text_projection"].T.contiguous()
    new["logit_scale"] = sd["logit_scale"]
    missing, unexpected = model.load_state_dict(new, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> CLIPModel conversion: missing {missing}, unexpected {unexpected}")
    return model


# -------------------------------------------------------------------------------------------- machine

def machine() -> dict:
    cpu = "unknown"
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for mod in ("onnxruntime", "fastembed", "torch", "transformers", "open_clip", "PIL", "numpy", "tokenizers"):
        try:
            from importlib.metadata import version

            dist = {"PIL": "pillow", "open_clip": "open_clip_torch", "fastembed": "fastembed-gpu",
                    "onnxruntime": "onnxruntime-gpu"}.get(mod, mod)
            versions[mod] = version(dist)
        except Exception:
            try:
                from importlib.metadata import version

                versions[mod] = version(mod)
            except Exception:
                versions[mod] = "-"
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram, 1), "isa": isa,
            "python": platform.python_version(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "quiet": Path("/tmp/fastclip-quiet").exists(),
            "load_avg_at_start": os.getloadavg()}


def machine_md(m: dict) -> str:
    v = m["versions"]
    return (f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, ISA {' '.join(m['isa'])}\n"
            f"- Software: Python {m['python']}, onnxruntime {v['onnxruntime']}, fastembed {v['fastembed']}, "
            f"torch {v['torch']}, transformers {v['transformers']}, open_clip {v['open_clip']}, "
            f"Pillow {v['PIL']}, numpy {v['numpy']}, tokenizers {v['tokenizers']}\n"
            f"- Date: {m['date']}; load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}"
            f"{'' if m['quiet'] else ' (machine NOT marked quiet: other work was running)'}\n")


# ---------------------------------------------------------------------------------------- measurement

def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


REPLY = "@@bench "  # worker replies on stdout carry this prefix; anything else a library prints is passed on


class Worker:
    """One system in its own fresh interpreter (so its peak RSS is its own), timing a pass on request.

    Every system of a comparison stays loaded and the parent asks them in turn, round after round
    (`interleave`); each figure is the median over rounds and each ratio the median of same-round
    ratios. This VM's speed drifts by up to ~20 % within minutes (measured: the same text run gave
    283-351 texts/s over half an hour), so timing systems one after another would hand whichever ran
    during a slow spell a loss it did not earn.
    """

    def __init__(self, script: Path, args: list[str], root: Path = ROOT):
        # root: the checkout whose fastclip the worker imports (another one to compare against, e.g. main's)
        self.cmd = [sys.executable, str(script), *args]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(root)})
        self.info: dict | None = None

    def ready(self) -> dict:
        """Wait for the worker to load its system; returns what it reported (load time, RSS)."""
        if self.info is None:
            self.info = self._reply()
        return self.info

    def time(self, bs: int) -> float:
        """Items per second of one timed pass over the worker's inputs at batch size `bs`."""
        return self._ask(op="time", bs=bs)["rate"]

    def finish(self) -> dict:
        """The worker's closing measurements (split timings, vectors saved, peak RSS); it then exits."""
        out = self._ask(op="finish")
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        return out

    def ask(self, **request) -> dict:
        """Send one request to a worker that serves its own ops (see bench_latency.py); returns its reply."""
        return self._ask(**request)

    def _ask(self, **request) -> dict:
        self.ready()
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
            sys.stderr.write(line)
        raise RuntimeError(f"{' '.join(self.cmd)} exited with {self.proc.wait()} (its stderr is above)")


def serve(embed, items: list, finish, info: dict, save_vectors: str | None = None) -> None:
    """The worker side of `Worker`: report `info`, then time passes on request until finished.

    embed(items, bs) -> (N, dim) vectors. Each batch size gets one untimed warm-up (its first
    max(bs, 2) items) before its first timed pass over all `items`. On "finish" the last pass's
    vectors are saved to `save_vectors` (if given) and the reply is info + finish() + peak RSS.
    """
    def reply(obj: dict) -> None:
        sys.stdout.write(REPLY + json.dumps(obj) + "\n")
        sys.stdout.flush()

    warmed, vectors = set(), None
    reply(info)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "time":
            bs = int(request["bs"])
            if bs not in warmed:
                embed(items[: max(bs, 2)], bs)  # graph caches, arenas, thread pools
                warmed.add(bs)
            t = time.perf_counter()
            vectors = embed(items, bs)
            reply({"rate": len(items) / (time.perf_counter() - t)})
        elif request["op"] == "finish":
            if save_vectors and vectors is not None:
                np.save(save_vectors, np.asarray(vectors, np.float32))
            reply({**info, **finish(), "peak_rss_mb": peak_rss_mb()})
            return


def best_seconds(fn, repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls of fn(), after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def interleave(workers: dict[str, Worker], batch_sizes: list[int], rounds: int) -> dict[str, dict[str, list[float]]]:
    """rates[system][str(bs)] = one rate per round; within a round every system runs each batch size once."""
    for w in workers.values():
        w.ready()
    rates = {s: {str(b): [] for b in batch_sizes} for s in workers}
    for r in range(rounds):
        for b in batch_sizes:
            for s, w in workers.items():
                rates[s][str(b)].append(w.time(b))
                print(f"round {r + 1}/{rounds} bs={b} {s}: {rates[s][str(b)][-1]:.1f}/s", file=sys.stderr, flush=True)
    return rates


def compare(script: Path, worker_args: dict[str, list[str]], batch_sizes: list[int], rounds: int,
            baseline: str = "fastembed") -> dict[str, dict]:
    """Start one `Worker` per system, `interleave` them, and collect each one's results: its closing
    measurements plus throughput (median per batch size), the rounds, and the median / min / max over
    rounds of its same-round ratio to `baseline` (when that system is in the comparison)."""
    workers = {s: Worker(script, args) for s, args in worker_args.items()}
    rates = interleave(workers, batch_sizes, rounds)
    results = {}
    for s, w in workers.items():
        r = {**w.finish(), "throughput": {b: float(np.median(v)) for b, v in rates[s].items()}, "rounds": rates[s]}
        if baseline in rates:
            r["ratio_" + baseline] = {b: _paired_ratio(rates[s][b], rates[baseline][b]) for b in rates[s]}
        results[s] = r
    return results


def _paired_ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of a[i] / b[i] (each pair measured minutes apart at most)."""
    r = np.asarray(a) / np.asarray(b)
    return float(np.median(r)), float(r.min()), float(r.max())


def torch_embed(items: list, bs: int, inputs, model) -> np.ndarray:
    """The PyTorch baselines' loop: batches of `bs` items -> inputs(batch) -> model -> L2-normalized numpy."""
    import torch

    out = []
    for i in range(0, len(items), bs):
        out.append(torch.nn.functional.normalize(model(inputs(items[i:i + bs])), dim=-1).numpy())
    return np.concatenate(out)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Prepare benchmark inputs and model; checks.")
    ap.add_argument("--photos", type=int, default=240)
    ap.add_argument("--check-hf", action="store_true", help="check the open_clip -> transformers conversion")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args()
    print(len(photos(a.photos)), "photos in", PHOTOS)
    print("checkpoint:", checkpoint())
    if not a.no_export:
        print("model:", model_folder())
    if a.check_hf:
        import torch
        from PIL import Image

        model, preprocess, tok = open_clip_model()
        hf = hf_model()
        px = torch.stack([preprocess(Image.open(p)) for p in photos(a.photos)[:4]])
        ids = tok(sentences(8))
        with torch.no_grad():
            ci = cosine_rows(model.encode_image(px).numpy(), hf.get_image_features(pixel_values=px).pooler_output.numpy()
                             if hasattr(hf.get_image_features(pixel_values=px), "pooler_output")
                             else hf.get_image_features(pixel_values=px).numpy())
            out = hf.get_text_features(input_ids=ids)
            out = out.pooler_output if hasattr(out, "pooler_output") else out
            ct = cosine_rows(model.encode_text(ids).numpy(), out.numpy())
        print("open_clip vs transformers cosine: image min", ci.min(), "text min", ct.min())

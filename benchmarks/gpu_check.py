"""GPU readiness: ViT-B/32 and ViT-H-14 image throughput on onnxruntime's CUDA provider, fp32 and fp16,
model only (with and without IO binding) and end to end, and which providers really ran.

Written for the device tool's bare GPU machine: no network; Python 3.12, torch 2.11 (CUDA 13 libraries
from the nvidia-* wheels), onnx, transformers, onnxruntime 1.30 *CPU build*, no open_clip. So:
- the models are transformers CLIPModels with random weights in the ViT-B/32 (OpenAI) and ViT-H-14 (LAION)
  shapes, exported there by fastclip's own export (`pretrained="none"`, fp32 + fp16, each verified against
  torch as every export is), in child processes side by side before anything is measured; one that does
  not finish in its time is stopped and the other model is still measured;
- CUDA comes from onnxruntime-gpu if it is installed, else from its CUDA provider library carried in
  `.whl/` (benchmarks/gpu_prepare.py: the sm_90 kernels only, xz-packed, ~50 MB), registered with the CPU
  build as a plugin execution provider. That registration is tried in a child process first, so a crash
  there is reported (with its signal) instead of ending this script. Without either, the table says why
  CUDAExecutionProvider could not be loaded and what ran instead.

Throughput is images per second on one stream: *model only* feeds the same random batch again and again
(`run` copies it host -> device and the vectors back each time; *IO binding* keeps input and output on the
GPU, so the difference is the transfers); *end to end* is fastclip's `ImageEmbedding.embed` over real JPEG
bytes (decode, exact resize/crop, normalize on CPU threads; model; L2-normalize), with its default decode
threads (min(4, cores)) and with one per core. Providers: what each session reports, and for ViT-B/32 a
profiled run's count of nodes per provider.

    python benchmarks/gpu_check.py --json $OUT/gpu_check.json      # on the GPU machine (~5-7 min)
    python benchmarks/gpu_check.py --models tiny --seconds 0.5     # anywhere: the whole path on CPU, ~1 min

Progress goes to stderr as it happens, the JSON is rewritten after every step, and the table is printed at
the end (and after an interruption), so a run cut by a time limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import lzma
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# transformers CLIPConfig shapes. b32: openai/clip-vit-base-patch32 (QuickGELU, transformers' default);
# h14: laion/CLIP-ViT-H-14-laion2B-s32B-b79K's vision tower (GELU). Token ids: the CLIP BPE tokenizer's own.
TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
SHAPES = {
    "tiny": dict(text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, **TOKENS),
                 vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=224, patch_size=32),
                 projection_dim=32),
    "b32": dict(text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, **TOKENS),
                vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                   image_size=224, patch_size=32),
                projection_dim=512),
    # Only images are measured: H-14's text tower (354 M parameters, ~1/3 of the export's time) is cut to
    # 2 small layers so the export fits the GPU machine's time; the vision tower is the real one.
    "h14": dict(text_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                                 hidden_act="gelu", **TOKENS),
                vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                                   image_size=224, patch_size=14, hidden_act="gelu"),
                projection_dim=1024),
}
NAMES = {"tiny": "tiny (test shape)", "b32": "ViT-B/32", "h14": "ViT-H-14 vision"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:400]


# ------------------------------------------------------------------------------------------ set-up

def import_paths(work: Path) -> None:
    """This checkout's fastclip, its export package (installed as fastclip_export; a checkout only has
    export/) and the test helpers (real photos, the CLIP tokenizer files)."""
    for p in (ROOT / "tests", ROOT):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    if importlib.util.find_spec("fastclip_export") is None:
        shim = work / "shim"
        shim.mkdir(parents=True, exist_ok=True)
        link = shim / "fastclip_export"
        if not link.exists():
            link.symlink_to(ROOT / "export")
        sys.path.insert(0, str(shim))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # for the children


def environment() -> dict:
    import onnxruntime as ort

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
           "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
           "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        if env["gpu"]:
            cap = torch.cuda.get_device_capability(0)
            env["gpu_capability"] = f"sm_{cap[0]}{cap[1]}"
    except Exception as exc:  # noqa: BLE001 - report, go on
        env["torch"] = f"not usable: {first_line(exc)}"
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return env


def carried_library(explicit: str | None, work: Path) -> tuple[Path | None, str]:
    """The CUDA provider library to register: the path given, or the one gpu_prepare.py left in .whl/
    (unpacked and checked against its sha256). (None, why) when there is none."""
    import onnxruntime as ort

    if explicit:
        path = Path(explicit)
        return (path, "") if path.is_file() else (None, f"{path}: no such file")
    packed = sorted((ROOT / ".whl").glob("onnxruntime_providers_cuda-*.so.xz"))
    if not packed:
        return None, ("onnxruntime here is a CPU build and no CUDA provider library was carried "
                      "(benchmarks/gpu_prepare.py writes one to .whl/)")
    mine = [p for p in packed if f"-{ort.__version__}-" in p.name]
    if not mine:
        return None, (f"the carried CUDA provider library is for onnxruntime {packed[0].name.split('-')[1]}, "
                      f"this machine has {ort.__version__}: the provider bridge must match exactly")
    xz = mine[0]
    meta = json.loads(Path(f"{xz}.json").read_text()) if Path(f"{xz}.json").is_file() else {}
    out = work / "ort-cuda" / "libonnxruntime_providers_cuda.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        data = lzma.decompress(xz.read_bytes())
        if meta.get("sha256") and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            return None, f"{xz.name}: unpacked bytes do not match the sha256 in {xz.name}.json"
        out.write_bytes(data)
        log(f"unpacked {xz.name} ({len(data) / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    return out, ""


def tiny_onnx(path: Path) -> Path:
    """A one-MatMul graph: enough to see whether a provider creates a session and runs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def preload_cuda_libraries() -> None:
    """Load the CUDA 13 libraries the provider links against (cudart, cublas, curand, cufft, cudnn) from the
    nvidia-* wheels, which the dynamic loader would not find by itself: torch's import does it, and the
    loop below does it where torch is missing. Once loaded, the provider's own links find them by name."""
    import ctypes

    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    # The same libraries straight from the nvidia-* wheels, in link order, for a machine without torch. A
    # library already loaded under that name is simply found again.
    for stem in ("libcudart.so", "libcublasLt.so", "libcublas.so", "libcurand.so", "libcufft.so", "libcudnn.so"):
        for site in [Path(p) for p in sys.path if p and Path(p, "nvidia").is_dir()]:
            for lib in sorted(Path(site, "nvidia").glob(f"*/lib/{stem}.[0-9]*")):
                try:
                    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass


def plugin_devices(library: str):
    import onnxruntime as ort

    ort.register_execution_provider_library(CUDA, library)
    return [d for d in ort.get_ep_devices() if d.ep_name == CUDA]


def plugin_probe(library: str, model: str) -> dict:
    """Child process: register the library, open a session on its CUDA device, run once."""
    import numpy as np

    import onnxruntime as ort

    preload_cuda_libraries()

    devices = plugin_devices(library)
    if not devices:
        return {"ok": False, "why": "the library registered, but it reports no CUDA device"}
    options = ort.SessionOptions()
    options.add_provider_for_devices(devices[:1], {})
    session = ort.InferenceSession(model, sess_options=options)
    y = session.run(None, {"x": np.ones((2, 64), np.float32)})[0]
    return {"ok": bool(np.allclose(y, 1.0)), "providers": session.get_providers(),
            "devices": [f"{d.device.type} vendor {d.device.vendor_id:#x} id {d.device.device_id}" for d in devices]}


class Cuda:
    """How CUDA is reached here: route "onnxruntime-gpu", "plugin" (carried library), or None, and why."""

    def __init__(self) -> None:
        self.route: str | None = None
        self.why = ""
        self.library: Path | None = None
        self.devices = []
        self.probe: dict = {}

    def setup(self, args, work: Path) -> None:
        import onnxruntime as ort

        if args.cpu:
            self.why = "--cpu: CUDA not tried"
            return
        try:
            import torch

            if not torch.cuda.is_available():
                log("torch sees no CUDA device")
        except Exception as exc:  # noqa: BLE001
            log(f"torch not usable ({first_line(exc)}); CUDA libraries must be on the loader's path")
        preload_cuda_libraries()
        if CUDA in ort.get_available_providers():
            from fastclip.providers import cuda_device_count

            count, reason = cuda_device_count()
            if count:
                self.route, self.why = "onnxruntime-gpu", f"onnxruntime {ort.__version__} GPU build, {count} device(s)"
            else:
                self.why = f"onnxruntime-gpu is installed but {reason}"
            return
        library, why = carried_library(args.cuda_ep, work)
        if library is None:
            self.why = why
            return
        probe_model = tiny_onnx(work / "probe.onnx")
        code = ("import json, sys; sys.path[:0] = sys.argv[3:]; import gpu_check; "
                "print('PROBE ' + json.dumps(gpu_check.plugin_probe(sys.argv[1], sys.argv[2])))")
        try:
            child = subprocess.run([sys.executable, "-c", code, str(library), str(probe_model), str(HERE)],
                                   capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            self.why = f"registering {library.name} as a plugin provider hung (180 s)"
            return
        lines = [x for x in child.stdout.splitlines() if x.startswith("PROBE ")]
        if child.returncode != 0 or not lines:
            died = (f"killed by {signal.Signals(-child.returncode).name}" if child.returncode < 0
                    else f"exit {child.returncode}")
            tail = " | ".join(child.stderr.strip().splitlines()[-3:])[-600:]
            self.why = f"the CUDA provider library could not be used as a plugin ({died}): {tail}"
            return
        self.probe = json.loads(lines[-1][6:])
        if not self.probe.get("ok"):
            self.why = f"plugin probe: {self.probe.get('why') or self.probe}"
            return
        self.devices = plugin_devices(str(library))
        self.library = library
        self.route = "plugin"
        self.why = (f"onnxruntime {ort.__version__} CPU build + the CUDA provider of onnxruntime-gpu as a plugin "
                    f"({library.name}); probe session providers {self.probe.get('providers')}")
        install_plugin_sessions(self.devices)

    @property
    def providers(self) -> list:
        return [CUDA, CPU] if self.route else [CPU]


def install_plugin_sessions(devices) -> None:
    """Make every InferenceSession asked for CUDAExecutionProvider (fastclip's included) use the plugin's
    CUDA device: a plugin provider is chosen through SessionOptions, not through `providers=`."""
    import onnxruntime as ort

    original = ort.InferenceSession
    if getattr(original, "_fastclip_plugin", False):
        return

    def session(path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
        names = [p[0] if isinstance(p, tuple) else p for p in (providers or [])]
        if CUDA in names:
            sess_options = sess_options or ort.SessionOptions()
            sess_options.add_provider_for_devices(devices[:1], {})
            providers = provider_options = None
        return original(path_or_bytes, sess_options=sess_options, providers=providers,
                        provider_options=provider_options, **kwargs)

    session._fastclip_plugin = True
    ort.InferenceSession = session


# ------------------------------------------------------------------------------------------ models

def export_child(name: str, out: str, precisions: str) -> None:
    """Child process: a config-only checkpoint of this shape, exported with random weights."""
    from conftest import copy_tokenizer_files
    from fastclip_export.api import export_model
    from fastclip_export.torchvision_compat import import_torchvision

    import_torchvision()
    from transformers import CLIPConfig

    checkpoint = Path(out).parent / f"{name}-config"
    checkpoint.mkdir(parents=True, exist_ok=True)
    CLIPConfig(**SHAPES[name]).save_pretrained(checkpoint)
    copy_tokenizer_files(checkpoint)
    export_model(str(checkpoint), out, pretrained="none", precisions=precisions.split(","), overwrite=True,
                 log=lambda m: log(f"  export {name}: {m}"))


class Export:
    """One model's export in a child process, started now and awaited later: the exports of all models run
    side by side (tracing is mostly one core; the machine has many), before any measurement, so they
    never share the CPU with a measurement."""

    def __init__(self, name: str, work: Path, precisions: list[str]):
        self.name, self.out = name, work / "models" / name
        self.info: dict = {}
        self.child = None
        if (self.out / "fastclip.json").is_file():
            from fastclip import manifest

            if set(precisions) <= set(manifest.load(self.out).vision.files):
                self.info = {"export_s": None, "note": "reused from an earlier run"}
                return
        code = ("import sys; sys.path.insert(0, sys.argv[4]); import gpu_check; "
                "gpu_check.export_child(sys.argv[1], sys.argv[2], sys.argv[3])")
        self.started = time.perf_counter()
        self.child = subprocess.Popen([sys.executable, "-c", code, name, str(self.out), ",".join(precisions), str(HERE)],
                                      stdout=sys.stderr)

    def wait(self, timeout: float) -> Path | None:
        if self.child is None:
            return self.out
        try:
            code = self.child.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
            self.info = {"error": f"export not finished within the time it was given ({timeout:.0f} s)"}
            return None
        seconds = round(time.perf_counter() - self.started, 1)
        if code != 0:
            self.info = {"error": f"export failed (exit {code}); see the log above", "export_s": seconds}
            return None
        self.info = {"export_s": seconds}
        return self.out


# ------------------------------------------------------------------------------------------ measuring

def timed(step, seconds: float, min_runs: int = 5) -> tuple[float, int]:
    """(seconds per call, calls): after 2 warm-up calls (the first one builds kernels / picks algorithms)."""
    step()
    step()
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < seconds:
        step()
        runs += 1
    return (time.perf_counter() - started) / runs, runs


def model_only(session, batch: int, size: int, seconds: float, on_gpu: bool) -> dict:
    import numpy as np

    name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    want = session.run([out_name], {name: x})[0]
    per, runs = timed(lambda: session.run([out_name], {name: x}), seconds)
    row = {"run_img_s": round(batch / per, 1), "run_batch_ms": round(per * 1e3, 2), "runs": runs}
    if not on_gpu:
        return row
    try:
        binding, keep, via = iobinding(session, name, out_name, x)
        row["iobinding_via"] = via
        session.run_with_iobinding(binding)
        got = binding.copy_outputs_to_cpu()[0]
        per, runs = timed(lambda: session.run_with_iobinding(binding), seconds)
        row.update(iobinding_img_s=round(batch / per, 1), iobinding_batch_ms=round(per * 1e3, 2),
                   iobinding_max_abs_diff=float(np.abs(got.astype(np.float32) - want).max()))
        del keep
    except Exception as exc:  # noqa: BLE001 - a plugin provider may not take every binding; say which
        row["iobinding_error"] = first_line(exc)
    return row


def iobinding(session, name: str, out_name: str, x):
    """Input copied to the GPU once, output allocated there: no host transfer per run. onnxruntime's own
    CUDA OrtValue where its build has one; else a torch CUDA tensor bound by pointer (a CPU build of
    onnxruntime running a plugin CUDA provider has no CUDA allocator of its own in Python)."""
    import onnxruntime as ort

    binding = session.io_binding()
    try:
        value = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding.bind_ortvalue_input(name, value)
        keep, via = value, "onnxruntime CUDA OrtValue"
    except Exception:  # noqa: BLE001 - a CPU build: "Can't allocate memory on the device using this package"
        import numpy as np
        import torch

        tensor = torch.from_numpy(x).to("cuda")
        torch.cuda.synchronize()  # the copy runs on torch's stream; onnxruntime reads on its own
        binding.bind_input(name, "cuda", 0, np.float32, list(x.shape), tensor.data_ptr())
        keep, via = tensor, "torch CUDA tensor bound by pointer"
    binding.bind_output(out_name, "cuda", 0)
    return binding, keep, via


def placement(path: Path, disabled: list[str], providers: list, work: Path) -> dict:
    """Nodes per provider in one profiled run: which providers really ran the graph."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(work / f"profile-{path.parent.parent.name}-{path.stem}")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers,
                                   disabled_optimizers=disabled or None)
    inp = session.get_inputs()[0]
    size = inp.shape[-1] if isinstance(inp.shape[-1], int) else 224
    session.run(None, {inp.name: np.zeros((1, 3, size, size), np.float32)})
    events = json.loads(Path(session.end_profiling()).read_text())
    counts: dict[str, int] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            p = e.get("args", {}).get("provider", "?")
            counts[p] = counts.get(p, 0) + 1
    return counts


def jpeg_inputs(count: int) -> list[bytes]:
    from PIL import Image
    from support.photos import PHOTO_NAMES, photo_array

    photos = []
    for name in PHOTO_NAMES:
        buf = io.BytesIO()
        Image.fromarray(photo_array(name)).convert("RGB").save(buf, format="JPEG", quality=90)
        photos.append(buf.getvalue())
    return [photos[i % len(photos)] for i in range(count)]


def end_to_end(model, batch: int, images: list[bytes]) -> float:
    """Images per second through `model.embed` (JPEG bytes in, normalized vectors out), after a warm-up."""
    for _ in model.embed(images[:batch], batch_size=batch):
        pass  # warm-up: decode threads started, kernels built
    started = time.perf_counter()
    n = sum(1 for _ in model.embed(images, batch_size=batch))
    return round(n / (time.perf_counter() - started), 1)


def bench(name: str, folder: Path, precision: str, cuda: Cuda, args, work: Path, budget) -> dict:
    from fastclip import ImageEmbedding

    row: dict = {"model": NAMES[name], "precision": precision}
    images = jpeg_inputs(max(args.e2e_images, args.batch * 4))
    cores = os.cpu_count() or 1
    # fastclip's default decode threads first (that object also gives the model-only figures: the same
    # session), then one decode thread per core where there are more cores than that.
    for label, workers in (("e2e", min(4, cores)), ("e2e_all_cores", cores)):
        if label == "e2e_all_cores" and workers <= 4:
            continue
        if label != "e2e" and budget.left() < 15:
            row[f"{label}_error"] = "skipped: time budget"
            continue
        started = time.perf_counter()
        with ImageEmbedding(folder, providers=cuda.providers, precision=precision, workers=workers) as model:
            loaded = model._tower
            if label == "e2e":
                row.update(load_s=round(time.perf_counter() - started, 1), device=loaded.device,
                           session_providers=loaded.session.get_providers())
                row.update(model_only(loaded.session, args.batch, model.spec.image_size, args.seconds,
                                      cuda.route is not None))
                entry = model.spec.files[precision]
                path, disabled = folder / entry.path, list(entry.disabled_optimizers)
            try:
                row[f"{label}_img_s"] = end_to_end(model, args.batch, images)
                row[f"{label}_workers"] = workers
            except Exception as exc:  # noqa: BLE001
                row[f"{label}_error"] = first_line(exc)
    if name != "h14" and budget.left() > 30:
        try:
            row["nodes_by_provider"] = placement(path, disabled, cuda.providers, work)
        except Exception as exc:  # noqa: BLE001
            row["nodes_by_provider"] = {"error": first_line(exc)}
    return row


# ------------------------------------------------------------------------------------------ report

class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def table(report: dict) -> str:
    def cell(row, key, fmt="{:.1f}"):
        v = row.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else ("err" if f"{key.rsplit('_img_s', 1)[0]}_error" in row else "-")

    env, cuda = report["environment"], report["cuda"]
    lines = [f"GPU check {report['date']}: {env.get('gpu') or 'no GPU'} ({env.get('gpu_capability', '-')}), "
             f"{env.get('cpus')} CPUs, Python {env['python']}, torch {env.get('torch')}, onnxruntime {env['onnxruntime']}",
             f"CUDA route: {cuda['route'] or 'none'}: {cuda['why']}",
             f"batch {report['args']['batch']}; img/s, one stream; model only = same random batch each run",
             "",
             f"{'model':<18} {'prec':<5} {'session providers':<42} {'load s':>6} {'model img/s':>11} {'+IO bind':>9} "
             f"{'ms/batch':>9} {'e2e img/s':>10} {'e2e all cores':>13}"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"{row['model']:<18} {row.get('precision', ''):<5} {row['error']}")
            continue
        lines.append(f"{row['model']:<18} {row['precision']:<5} {','.join(row['session_providers']):<42} "
                     f"{cell(row, 'load_s'):>6} {cell(row, 'run_img_s'):>11} {cell(row, 'iobinding_img_s'):>9} {cell(row, 'run_batch_ms', '{:.2f}'):>9} "
                     f"{cell(row, 'e2e_img_s'):>10} {cell(row, 'e2e_all_cores_img_s'):>13}")
    notes = []
    for row in report["rows"]:
        for key in ("iobinding_error", "e2e_error", "e2e_all_cores_error"):
            if key in row:
                notes.append(f"{row['model']} {row.get('precision')}: {key[:-6]}: {row[key]}")
        if "nodes_by_provider" in row:
            notes.append(f"{row['model']} {row['precision']}: nodes by provider (profiled run) {row['nodes_by_provider']}")
    for name, info in report["exports"].items():
        notes.append(f"export {NAMES[name]}: {info}")
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="b32,h14", help="comma list of: tiny, b32, h14")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement (after warm-up)")
    ap.add_argument("--e2e-images", type=int, default=512, help="JPEGs per end-to-end pass")
    ap.add_argument("--budget-s", type=float, default=480, help="start no new step after this many seconds")
    ap.add_argument("--cuda-ep", help="a libonnxruntime_providers_cuda.so to register (default: the one in .whl/)")
    ap.add_argument("--cpu", action="store_true", help="do not try CUDA")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "fastclip-gpu-check"))
    ap.add_argument("--json", default=os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    args = ap.parse_args()
    budget = Budget(args.budget_s)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import_paths(work)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SHAPES]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    precisions = [p.strip() for p in args.precisions.split(",")]

    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args), "rows": [], "exports": {}}
    report["environment"] = environment()
    log(json.dumps(report["environment"]))
    cuda = Cuda()
    cuda.setup(args, work)
    report["cuda"] = {"route": cuda.route, "why": cuda.why, "probe": cuda.probe,
                      "carried": [json.loads(m.read_text()) for m in sorted((ROOT / ".whl").glob("*.so.xz.json"))]}
    log(f"CUDA route: {cuda.route}: {cuda.why}")

    def save() -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")

    save()
    # Time kept for measuring each model once the exports are done.
    reserve = {"tiny": 20, "b32": 60, "h14": 90}
    exports = {}
    try:
        for name in models:
            log(f"exporting {NAMES[name]} ({','.join(precisions)}) in a child process")
            exports[name] = Export(name, work, precisions)
        folders = {}
        for name in models:
            folders[name] = exports[name].wait(budget.left() - sum(reserve[m] for m in models))
            report["exports"][name] = exports[name].info
            log(f"export {NAMES[name]}: {exports[name].info}")
            save()
        for name in models:
            if folders[name] is None:
                continue
            for precision in precisions:
                if budget.left() < 20:
                    report["rows"].append({"model": NAMES[name], "precision": precision, "error": "skipped: time budget"})
                    continue
                log(f"measuring {NAMES[name]} {precision}; {budget.left():.0f} s left")
                try:
                    row = bench(name, folders[name], precision, cuda, args, work, budget)
                except Exception as exc:  # noqa: BLE001 - one failed configuration must not end the run
                    row = {"model": NAMES[name], "precision": precision, "error": first_line(exc)}
                report["rows"].append(row)
                log(json.dumps(row))
                save()
    except KeyboardInterrupt:
        report["interrupted"] = True
    finally:
        for e in exports.values():
            if e.child is not None and e.child.poll() is None:
                e.child.kill()
    save()
    print(table(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

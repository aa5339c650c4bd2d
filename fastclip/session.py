"""onnxruntime sessions: which device really works, which precision to load, threads.

onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a GPU, and asking for it
there prints a red error before falling back to CPU. So we probe the CUDA driver ourselves first
(libcuda: cuInit + cuDeviceGetCount), only then ask onnxruntime for CUDA, and check which provider
the session really got. Whatever happens, one clean log line says where the model runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import ModelError
from .manifest import Tower, sha256

log = logging.getLogger("fastclip")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices the driver reports, reason when 0). Never raises."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    found = ctypes.util.find_library("cuda")
    if found:
        names.append(found)
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "no CUDA driver (libcuda) on this machine"
    try:
        if lib.cuInit(0) != 0:
            return 0, "the CUDA driver did not initialize (cuInit failed)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return 0, "the CUDA driver reports no device"
        return count.value, ""
    except (AttributeError, OSError) as exc:  # a stub libcuda without the symbols
        return 0, f"the CUDA driver is unusable ({exc})"


def _announce(message: str) -> None:
    # One line per distinct outcome per process, not one per session.
    if message not in _announced:
        _announced.add(message)
        log.info(message)


_announced: set[str] = set()


def default_providers() -> tuple[list[str], str]:
    """Providers to ask for when the user gave none, and why."""
    if CUDA not in ort.get_available_providers():
        return [CPU], "this onnxruntime build has no CUDA provider"
    count, reason = cuda_device_count()
    if count == 0:
        return [CPU], f"{reason}; CUDAExecutionProvider is listed but cannot run"
    return [CUDA, CPU], f"{count} CUDA device(s) found"


@dataclass
class LoadedTower:
    session: ort.InferenceSession
    precision: str
    device: str  # "cuda" or "cpu": what the session really runs on
    path: Path


def pick_precision(tower: Tower, device: str, requested: str | None, where: str) -> str:
    """fp16 on GPU when present, fp32 otherwise; int8 only when asked for by name."""
    if requested is not None:
        if requested not in tower.files:
            raise ModelError(
                f"{where}: precision {requested!r} not in this model folder "
                f"(available: {', '.join(sorted(tower.files))})"
            )
        return requested
    if device == "cuda" and "fp16" in tower.files:
        return "fp16"
    if "fp32" in tower.files:
        return "fp32"
    raise ModelError(
        f"{where}: no fp32 model to run on {device.upper()}; pass precision= one of {sorted(tower.files)}"
    )


def _check_file(folder: Path, rel: str, expected_bytes: int | None, where: str) -> Path:
    path = folder / rel
    if not path.is_file():
        raise ModelError(f"{where}: model file missing: {path}")
    if expected_bytes is not None and path.stat().st_size != expected_bytes:
        raise ModelError(
            f"{where}: {path} is {path.stat().st_size} bytes, the manifest says {expected_bytes}; "
            "the file is truncated or corrupt - download or export it again"
        )
    return path


def open_tower(
    folder: Path,
    tower: Tower,
    *,
    name: str,
    providers: list | None = None,
    threads: int | None = None,
    precision: str | None = None,
    verify: bool = False,
    allow_spinning: bool = True,
    announce: bool = True,
) -> LoadedTower:
    """Check the tower's files, then open an onnxruntime session on the best device that works.

    allow_spinning=False stops onnxruntime's idle intra-op threads from spin-waiting between
    operators, leaving the cores to other threads of the process (image decoding). announce=False
    skips the one log line (for a second session of a tower already announced).
    """
    where = f"{folder} ({name} tower)"
    if providers is None:
        providers, why = default_providers()
    else:
        why = "as requested"
    wants_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA for p in providers)
    chosen = pick_precision(tower, "cuda" if wants_cuda else "cpu", precision, where)
    entry = tower.files[chosen]
    path = _check_file(folder, entry.path, entry.bytes, where)
    extras = [_check_file(folder, extra, None, where) for extra in entry.external_data]
    if verify:
        expected = {path: entry.sha256, **{folder / rel: h for rel, h in entry.external_data_sha256.items()}}
        for file in [path, *extras]:
            want = expected.get(file)
            if want and sha256(file) != want:
                raise ModelError(f"{where}: {file} does not match the sha256 in the manifest; export or download it again")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Quiet onnxruntime's own warnings (e.g. about providers); we log the outcome ourselves.
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=providers,
            # The export stage lists graph transformers known to break this file (e.g. on fp16 graphs).
            disabled_optimizers=list(entry.disabled_optimizers) or None,
        )
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}: onnxruntime could not load {path}: {first}") from None

    got = session.get_providers()
    device = "cuda" if got and got[0] == CUDA else "cpu"
    if wants_cuda and device == "cpu":
        why = "CUDA was asked for but onnxruntime fell back; check the CUDA and cuDNN 9 libraries"
        if chosen == "fp16" and precision is None and "fp32" in tower.files:
            # The fp16 tower was picked for a GPU we did not get; fp32 is the right CPU variant.
            return open_tower(folder, tower, name=name, providers=[CPU], threads=threads, precision="fp32", verify=verify,
                               allow_spinning=allow_spinning, announce=announce)
    if announce:
        _announce(f"fastclip: {name} tower on {device.upper()} ({why}), {chosen}")
    return LoadedTower(session=session, precision=chosen, device=device, path=path)

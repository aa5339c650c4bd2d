"""Which device really works: the CUDA probe and the providers a model asks onnxruntime for.

onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a GPU, and asking for it
there prints a red error before falling back to CPU. So we probe the CUDA driver ourselves first
(libcuda: cuInit + cuDeviceGetCount), only then ask onnxruntime for CUDA; fastclip.session checks
which provider the session really got.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from typing import Any

import onnxruntime as ort

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


def log_once(message: str) -> None:
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


def resolve_providers(providers: list | None, cuda: Any = None,
                      device_ids: list[int] | None = None) -> tuple[list | None, bool]:
    """The onnxruntime providers a model asks for: (providers, or None for `default_providers`; CUDA required).

    cuda and device_ids are fastembed's keywords: cuda=True requires CUDA, False pins the CPU, None or
    "auto" (also fastembed's Device enum) lets CUDA be used where it really works. device_ids[0] is the
    GPU the CUDA provider runs on, also in providers given by name (a pool gives each worker its own id).
    """
    mode = getattr(cuda, "value", cuda)
    device = int(device_ids[0]) if device_ids else None
    if mode in (None, "auto"):
        if device is None:
            return providers, False
        if providers is None:
            return [(CUDA, {"device_id": device}), CPU], False  # used only if CUDA really works
        return [_on_device(p, device) for p in providers], False
    if providers is not None:
        raise ValueError("pass either providers= or cuda=, not both")
    if mode is True or mode == "cuda":
        return [(CUDA, {"device_id": device or 0}), CPU], True
    if mode is False or mode == "cpu":
        return [CPU], False
    raise ValueError(f"cuda must be True, False or 'auto', got {cuda!r}")


def _on_device(provider: Any, device: int) -> Any:
    name, options = provider if isinstance(provider, tuple) else (provider, {})
    return (CUDA, {**options, "device_id": device}) if name == CUDA else provider

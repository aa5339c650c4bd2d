"""Which device really works: the CUDA probe and the providers a model asks onnxruntime for.

onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a GPU, and asking for it
there prints a red error before falling back to CPU. So we probe the CUDA driver ourselves first
(libcuda: cuInit + cuDeviceGetCount), only then ask onnxruntime for CUDA; fastclip.session checks
which provider the session really got.

onnxruntime itself is checked on import: its CPU build (`onnxruntime`, which fastembed pulls) and its GPU
build (`onnxruntime-gpu`, ours) install the same `onnxruntime/` folder. With both, the files in use are those
of the last one installed, and `pip uninstall` of either deletes the files they share: `import onnxruntime`
then finds the leftover folder as an empty namespace package, without `get_available_providers`. Both
states are named here with their fix, instead of an AttributeError deep in a session.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
import sys
from typing import Any

from .defaults import DISTRIBUTION
from .errors import ModelError, first_line

log = logging.getLogger("fastclip")

# The distributions that install the one `onnxruntime/` package folder: onnxruntime's builds for each device.
ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                      "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-training", "onnxruntime-silicon")
# Where pyproject.toml asks for onnxruntime-gpu (its wheels exist there); elsewhere for onnxruntime.
GPU_BUILD = (sys.platform == "linux" and platform.machine() == "x86_64") or sys.platform == "win32"

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def installed_builds() -> dict[str, str]:
    """The onnxruntime distributions installed (name -> version), read from their metadata."""
    from importlib import metadata

    found = {}
    for name in ONNXRUNTIME_BUILDS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def repair_hint() -> str:
    from .hints import cpu_install_hint

    if not GPU_BUILD:
        return "repair it: pip install --force-reinstall onnxruntime"
    return ("repair it: pip install --force-reinstall onnxruntime-gpu (the build fastclip uses here), or for CPU "
            "only: pip uninstall -y onnxruntime-gpu && pip install --force-reinstall onnxruntime, with fastclip's "
            f"CPU build ({cpu_install_hint()})")


def _listed(builds: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in builds.items()) or "none"


def checked_onnxruntime():
    """onnxruntime, once it is known to work: a broken or missing install is a ModelError naming the fix, and
    two builds sharing its folder a warning (logged once: this runs when the module is imported)."""
    builds = installed_builds()
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(f"onnxruntime cannot be imported ({first_line(exc)}; installed: {_listed(builds)}); "
                         f"{repair_hint()}") from None
    missing = [n for n in ("get_available_providers", "InferenceSession", "SessionOptions")
               if not hasattr(onnxruntime, n)]
    if missing:
        where = ", ".join(getattr(onnxruntime, "__path__", None) or [getattr(onnxruntime, "__file__", None) or "?"])
        raise ModelError(
            f"onnxruntime in {where} is broken: it has no {', '.join(missing)} (installed: {_listed(builds)}). "
            "Two onnxruntime builds were installed into that one folder (e.g. fastembed's onnxruntime beside "
            "fastclip's onnxruntime-gpu) and uninstalling one took the files they shared; " + repair_hint()
        )
    if len(builds) > 1:
        from .hints import cpu_install_hint

        cuda = "with" if CUDA in onnxruntime.get_available_providers() else "without"
        keep = "onnxruntime-gpu" if GPU_BUILD else "onnxruntime"
        log.warning(
            "fastclip: %s are installed together, in one onnxruntime/ folder: the files in use (now a build %s CUDA) "
            "are those of the last one installed, and uninstalling one breaks the others. Keep one: pip uninstall "
            "-y %s && pip install %s. Beside fastembed: fastembed-gpu with %s, or fastembed with fastclip's CPU "
            "build (%s)", _listed(builds), cuda, " ".join(builds), keep, DISTRIBUTION, cpu_install_hint())
    return onnxruntime


ort = checked_onnxruntime()


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

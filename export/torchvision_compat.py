"""Make open_clip importable when torchvision's compiled ops cannot load.

open_clip imports torchvision for its image transforms. PyPI's torchvision wheels are CUDA builds;
next to a CPU-only torch their `_C` extension fails to load, and torchvision's import then dies
registering fake kernels for `torchvision::nms` / `qnms`, operators that were never defined.
Nothing fastclip uses needs those operators (open_clip's transforms run on PIL and plain torch),
so when - and only when - they are missing we declare their schemas and import again.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("fastclip.export")

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_lib = None  # keep the Library object alive: dropping it would unregister the schemas


def import_torchvision():
    global _lib
    try:
        import torchvision
        return torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _lib = torch.library.Library("torchvision", "FRAGMENT")
    for op, schema in _MISSING_OPS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{op}"):
            try:
                _lib.define(schema)
            except RuntimeError:
                pass  # already defined by a partial earlier import
    log.info("torchvision's compiled ops do not match this torch build; using its pure-Python transforms only")
    import torchvision

    return torchvision


def import_open_clip():
    import_torchvision()
    import open_clip

    return open_clip

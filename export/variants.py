"""Reduced-precision variants of an exported fp32 tower.

fp16: every weight and activation in half precision, but inputs and outputs stay float32
(`keep_io_types`) so callers feed and read the same arrays for every variant.
int8: dynamic quantization (weights int8 ahead of time, activations quantized per batch at run
time) of MatMul/Gemm. Signed int8 weights, per output channel: measured on ViT-B/32 this was both
the most faithful and the fastest of the four {QInt8, QUInt8} x {per-tensor, per-channel} choices on
an AVX-512 VNNI CPU.

onnxruntime.transformers.optimizer was tried on the fp32 towers and left out: its fusions
(SkipLayerNorm, BiasGelu; attention is not fused for open_clip's nn.MultiheadAttention) are what
onnxruntime already does itself when it loads the graph, and the pre-fused files ran no faster.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from . import onnx_io

# onnxruntime 1.31's CPU NchwcTransformer (a level-3 layout pass) segfaults while loading fp16
# CLIP graphs; the graphs run fine, and as fast as fp32, without it. Recorded per file in the manifest.
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def to_int8(fp32_path: Path) -> onnx.ModelProto:
    """Dynamically quantize the fp32 file at `fp32_path` (it may use external data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=fp32_path.parent) as scratch:
        tmp = Path(scratch) / "int8.onnx"
        # quantize_dynamic warns on the root logger that static-quantization pre-processing was not
        # run; that advice does not apply to dynamic quantization of these graphs.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32_path), str(tmp), per_channel=True, weight_type=QuantType.QInt8,
                             use_external_data_format=True)
        finally:
            root.setLevel(level)
        return onnx_io.load(tmp)

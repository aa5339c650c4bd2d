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
from pathlib import Path

from . import onnx_io

# onnxruntime 1.31's CPU NchwcTransformer (a level-3 layout pass) segfaults while loading fp16
# CLIP graphs; the graphs run fine, and as fast as fp32, without it. Recorded per file in the manifest.
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


def to_fp16(fp32_path: Path, out_path: Path) -> None:
    """Write the fp16 form of the fp32 file at `fp32_path` (any size) to `out_path`, with external data.

    Given a path, the converter infers shapes with `infer_shapes_path`, which works on the graph
    without its weights; shape inference on the in-memory model serializes weights and all, and
    protobuf refuses messages over 2 GB. The weights are then converted in place, one tensor at a
    time, so memory holds about one copy of the tower.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(str(fp32_path), keep_io_types=True)
    onnx_io.save(model, out_path, external=True)


def to_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamically quantize the fp32 file at `fp32_path` (it may use external data) into `out_path`,
    with external data."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer needs a Conv's weight to be an initializer. The exporter deduplicates identical
    # weights behind Identity nodes: ModifiedResNet's random init zeroes each block's last BatchNorm
    # scale, so every folded conv3 weight is all zeros (RN50x4: 22 of 85 Convs). Those stay fp32.
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    shared = [node.name for node in graph.node if node.op_type == "Conv" and node.input[1] not in weights]
    # quantize_dynamic warns on the root logger that static-quantization pre-processing was not
    # run; that advice does not apply to dynamic quantization of these graphs.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(out_path), per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=True, nodes_to_exclude=shared)
    finally:
        root.setLevel(level)

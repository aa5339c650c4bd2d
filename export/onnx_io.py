"""torch tower -> ONNX file, and ONNX files on disk (external data, hashes).

The TorchScript exporter (`dynamo=False`) is used on purpose: on these towers it is about twice as
fast as the dynamo exporter, gives the same parity, and its dynamic axes need no shape constraints.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from fastclip.manifest import sha256

OPSET = 17
# Protobuf cannot hold a message over 2 GiB; stay clear of it with some room for the graph itself.
EXTERNAL_DATA_BYTES = 1_800_000_000
IR_VERSION = 9  # onnxruntime >= 1.16 reads it; newer onnx releases would otherwise stamp an IR too new for ORT


def export_tower(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
                 dynamic_axes: dict[int, str]) -> None:
    """Trace `module` into `path` (a scratch file; `save` writes the final form)."""
    module.eval()
    # nn.MultiheadAttention's inference fast path is one fused aten op that has no ONNX export.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
            torch.onnx.export(
                module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: dynamic_axes, output_name: {0: dynamic_axes[0]}},
                opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).nbytes
    return total


def needs_external_data(model: onnx.ModelProto, forced: bool | None) -> bool:
    return forced if forced is not None else initializer_bytes(model) > EXTERNAL_DATA_BYTES


def save(model: onnx.ModelProto, path: Path, external: bool) -> list[str]:
    """Write `model` to `path`; with `external`, all weights go to one `<name>.data` file beside it.

    Returns the external-data file names (relative to the folder of `path`).
    """
    model.ir_version = min(model.ir_version, IR_VERSION)
    if not external:
        onnx.save_model(model, str(path))
        return []
    data_name = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [data_name]


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def file_record(folder: Path, tower: str, name: str, external_data: list[str],
                disabled_optimizers: tuple[str, ...] = ()) -> dict:
    """The manifest entry of one ONNX variant; paths are relative to the model folder."""
    path = folder / tower / name
    record = {"path": f"{tower}/{name}", "sha256": sha256(path), "bytes": path.stat().st_size,
              "external_data": [f"{tower}/{d}" for d in external_data]}
    if external_data:
        # The data files are what really carries the weights: hash them too.
        record["external_data_sha256"] = {f"{tower}/{d}": sha256(folder / tower / d) for d in external_data}
        record["external_data_bytes"] = sum((folder / tower / d).stat().st_size for d in external_data)
    if disabled_optimizers:
        record["disabled_optimizers"] = list(disabled_optimizers)
    return record

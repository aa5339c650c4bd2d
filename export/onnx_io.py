"""torch tower -> ONNX file, and ONNX files on disk (external data, hashes).

The TorchScript exporter (`dynamo=False`) is used on purpose: on these towers it is about twice as
fast as the dynamo exporter, gives the same parity, and its dynamic axes need no shape constraints.

Over 2 GB the exporter writes one external-data file per tensor (ViT-H-14's vision tower: ~200 files
named after the tensors) beside its output. It therefore traces into a scratch folder, and `copy`
writes the final file: graph plus at most one `<name>.data` file, streamed tensor by tensor so the
weights are never held twice in memory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import onnx
import torch
from onnx import external_data_helper

from fastclip.hashing import sha256

OPSET = 17
# Protobuf cannot hold a message over 2 GiB; stay clear of it with some room for the graph itself.
EXTERNAL_DATA_BYTES = 1_800_000_000
IR_VERSION = 9  # onnxruntime >= 1.16 reads it; newer onnx releases would otherwise stamp an IR too new for ORT
# Tensors below this stay inside the graph even with external data (onnx's own default threshold).
INLINE_BYTES = 1024


def export_tower(module: torch.nn.Module, example: torch.Tensor | tuple, path: Path, input_name: str | list[str],
                 output_name: str, dynamic_axes: dict[int, str]) -> None:
    """Trace `module` into `path`, in a folder of its own: over 2 GB torch scatters the weights
    into one file per tensor beside it. `copy` makes the final form. Several inputs (a tuple of
    examples and a list of names) share the same dynamic axes."""
    module.eval()
    examples = example if isinstance(example, tuple) else (example,)
    names = [input_name] if isinstance(input_name, str) else list(input_name)
    # nn.MultiheadAttention's inference fast path is one fused aten op that has no ONNX export.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
            torch.onnx.export(
                module, examples, str(path), input_names=names, output_names=[output_name],
                dynamic_axes={**{name: dynamic_axes for name in names}, output_name: {0: dynamic_axes[0]}},
                opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant-node values: every tensor that may carry weights (CLIP graphs
    have no subgraphs)."""
    yield from model.graph.initializer
    yield from _attribute_tensors(model)


def _attribute_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def _payload(tensor: onnx.TensorProto, base: Path) -> bytes | None:
    """The tensor's bytes in raw little-endian form, read from its external file when it has one;
    None for tensors kept in typed fields (tiny ones the exporter writes as lists)."""
    if _is_external(tensor):
        info = external_data_helper.ExternalDataInfo(tensor)
        with open(base / info.location, "rb") as f:
            f.seek(info.offset or 0)
            return f.read(info.length) if info.length else f.read()
    return tensor.raw_data if tensor.HasField("raw_data") else None


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def weight_bytes(path: Path) -> int:
    """Bytes of all weights of the ONNX file at `path`, inline or external, without loading them."""
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in _tensors(model):
        if _is_external(t):
            info = external_data_helper.ExternalDataInfo(t)
            total += info.length or os.path.getsize(path.parent / info.location) - (info.offset or 0)
        else:
            total += t.ByteSize()
    return total


def needs_external_data(path: Path, forced: bool | None) -> bool:
    return forced if forced is not None else weight_bytes(path) > EXTERNAL_DATA_BYTES


def copy(src: Path, dst: Path, external: bool) -> list[str]:
    """Write the ONNX file `src` (with whatever external data it references) as `dst`: weights inline,
    or with `external` every tensor of INLINE_BYTES or more in one `<dst name>.data` file beside it.

    One tensor at a time is read, written and dropped. Returns the external-data file names
    (relative to the folder of `dst`).
    """
    model = onnx.load(str(src), load_external_data=False)
    model.ir_version = min(model.ir_version, IR_VERSION)
    if not external:
        external_data_helper.load_external_data_for_model(model, str(src.parent))
        onnx.save_model(model, str(dst))
        return []
    data_name = dst.name + ".data"
    with open(dst.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            payload = _payload(tensor, src.parent)
            if payload is None or (len(payload) < INLINE_BYTES and not _is_external(tensor)):
                continue
            offset = data.tell()
            data.write(payload)
            del payload
            tensor.ClearField("raw_data")
            _point_to(tensor, data_name, offset, data.tell() - offset)
    # onnxruntime reads external data for initializers only: any weight a Constant node carries
    # goes back inside the graph.
    for tensor in _attribute_tensors(model):
        if _is_external(tensor):
            tensor.raw_data = _payload(tensor, src.parent)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    onnx.save_model(model, str(dst))
    return [data_name]


def save(model: onnx.ModelProto, path: Path, external: bool) -> list[str]:
    """Write the in-memory `model` to `path`; with `external`, all weights go to one `<name>.data` file
    beside it. Returns the external-data file names (relative to the folder of `path`)."""
    model.ir_version = min(model.ir_version, IR_VERSION)
    if not external:
        onnx.save_model(model, str(path))
        return []
    data_name = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=INLINE_BYTES)
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

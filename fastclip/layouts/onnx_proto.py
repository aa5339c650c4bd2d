"""An ONNX file's graph inputs, outputs and named scalar initializers, read from the protobuf without loading it.

The layout readers need a graph's signature (names, element types, shapes) to derive a manifest, and a
publisher's joint graph holds the trained logit scale as an initializer. onnxruntime answers the first only
by building a session, which reads every weight (1-2 s and the model's size in memory for a ViT-B tower, paid
again when the real session opens), and the runtime has no `onnx` package. The file format is plain protobuf,
so this walks its wire format over a memory map: the few fields wanted are parsed, everything else (node
lists, weight bytes) is skipped by its length prefix, and the pages never touched are never read.

Field numbers are onnx.proto's (ModelProto.graph = 7; GraphProto.node = 1, initializer = 5, input = 11,
output = 12; NodeProto.input = 1, output = 2, op_type = 4, attribute = 5; AttributeProto.name = 1, t = 5;
ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1; Tensor.elem_type = 1, shape = 2;
TensorShapeProto.dim = 1; Dimension.dim_value = 1, dim_param = 2; TensorProto.dims = 1, data_type = 2,
float_data = 4, name = 8, raw_data = 9, data_location = 14).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

__all__ = ["Node", "Port", "Signature", "read_signature", "ELEMENT_TYPES"]

# TensorProto.DataType codes -> onnxruntime's type strings ("tensor(float)").
ELEMENT_TYPES = {1: "float", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "double",
                 16: "bfloat16"}
_FLOAT, _FLOAT16, _DOUBLE = 1, 10, 11


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, element type ("float", "int32", ...) and shape (an int per fixed
    axis, the symbol's name or None per free one)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    # Tensors holding one float, by name: initializers (e.g. "logit_scale") and, with nodes, Constant outputs.
    scalars: dict[str, float]
    nodes: tuple[Node, ...] = ()  # the top-level graph's nodes, when asked for

    def describe(self) -> str:
        """One line for error messages: every input and output with its type and shape."""
        def ports(ps: tuple[Port, ...]) -> str:
            return ", ".join(f"{p.name} {p.type}[{', '.join('?' if d is None else str(d) for d in p.shape)}]"
                             for p in ps) or "none"
        return f"inputs: {ports(self.inputs)}; outputs: {ports(self.outputs)}"


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited payload) for each field."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = (pos, pos + 4), pos + 4
        else:  # groups (3, 4) are not used by onnx.proto
            raise _Malformed(f"unexpected wire type {wire}")
        if pos > end:
            raise _Malformed("a field runs past its message")
        yield number, wire, value


def _text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", errors="replace")


def _port(buf, span: tuple[int, int]) -> Port:
    name, elem, shape = "", 0, []
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == 2:
            name = _text(buf, value)
        elif number == 2 and wire == 2:  # TypeProto
            for n2, w2, v2 in _fields(buf, *value):
                if n2 == 1 and w2 == 2:  # tensor_type
                    for n3, w3, v3 in _fields(buf, *v2):
                        if n3 == 1 and w3 == 0:
                            elem = v3
                        elif n3 == 2 and w3 == 2:  # shape
                            for n4, w4, v4 in _fields(buf, *v3):
                                if n4 == 1 and w4 == 2:
                                    shape.append(_dimension(buf, v4))
    return Port(name=name, type=ELEMENT_TYPES.get(elem, f"type {elem}"), shape=tuple(shape))


def _dimension(buf, span: tuple[int, int]) -> int | str | None:
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == 0:
            return value
        if number == 2 and wire == 2:
            return _text(buf, value)
    return None


def _initializer(buf, span: tuple[int, int]) -> tuple[str, float | None]:
    """(name, value): the value when the initializer holds exactly one float stored in the file, else None."""
    name, dims, dtype, raw, floats, external = "", [], 0, None, None, False
    for number, wire, value in _fields(buf, *span):
        if number == 1:
            if wire == 0:
                dims.append(value)
            elif wire == 2:  # packed dims
                pos, end = value
                while pos < end:
                    d, pos = _varint(buf, pos, end)
                    dims.append(d)
        elif number == 2 and wire == 0:
            dtype = value
        elif number == 8 and wire == 2:
            name = _text(buf, value)
        elif number == 9 and wire == 2:
            raw = value
        elif number == 4 and wire == 2:
            floats = value
        elif number == 14 and wire == 0:
            external = value == 1
    fmt = {_FLOAT: "<f", _DOUBLE: "<d", _FLOAT16: "<e"}.get(dtype)
    if external or fmt is None or any(d != 1 for d in dims):
        return name, None
    if raw is not None and raw[1] - raw[0] == struct.calcsize(fmt):
        return name, float(struct.unpack(fmt, bytes(buf[raw[0] : raw[1]]))[0])
    if floats is not None and dtype == _FLOAT and floats[1] - floats[0] == 4:  # packed float_data
        return name, float(struct.unpack("<f", bytes(buf[floats[0] : floats[1]]))[0])
    return name, None


def read_signature(path: Path, nodes: bool = False) -> Signature:
    """The graph's inputs (initializers listed as inputs by old exporters left out), outputs and one-float
    initializers of the ONNX file at `path` (with `nodes`, also its nodes and one-float Constants), or
    ModelError naming the file."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _read(buf, nodes)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except (OSError, ValueError, _Malformed) as exc:  # mmap of an empty file raises ValueError
        raise ModelError(f"{path}: not a readable ONNX file ({exc})") from None


def _node(buf, span: tuple[int, int], scalars: dict[str, float]) -> Node:
    op, inputs, outputs, value = "", [], [], None
    for number, wire, v in _fields(buf, *span):
        if wire != 2:
            continue
        if number == 1:
            inputs.append(_text(buf, v))
        elif number == 2:
            outputs.append(_text(buf, v))
        elif number == 4:
            op = _text(buf, v)
        elif number == 5:  # AttributeProto: a Constant's "value" tensor
            for n2, w2, v2 in _fields(buf, *v):
                if n2 == 5 and w2 == 2:
                    value = _initializer(buf, v2)[1]
    if op == "Constant" and value is not None and len(outputs) == 1:
        scalars[outputs[0]] = value
    return Node(op=op, inputs=tuple(inputs), outputs=tuple(outputs))


def _read(buf, with_nodes: bool) -> Signature:
    graph = None
    for number, wire, value in _fields(buf, 0, len(buf)):
        if number == 7 and wire == 2:
            graph = value
    if graph is None:
        raise _Malformed("no graph in the model")
    inputs, outputs, scalars, initializers, nodes = [], [], {}, set(), []
    for number, wire, value in _fields(buf, *graph):
        if wire != 2:
            continue
        if number == 1 and with_nodes:
            nodes.append(_node(buf, value, scalars))
        elif number == 11:
            inputs.append(_port(buf, value))
        elif number == 12:
            outputs.append(_port(buf, value))
        elif number == 5:
            name, scalar = _initializer(buf, value)
            initializers.add(name)
            if scalar is not None:
                scalars[name] = scalar
    if not outputs:
        raise _Malformed("the graph declares no outputs")
    return Signature(inputs=tuple(p for p in inputs if p.name not in initializers), outputs=tuple(outputs),
                     scalars=scalars, nodes=tuple(nodes))


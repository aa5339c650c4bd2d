"""Two tiny ONNX graphs (scores = Gemm; scores + TopK), serialized by hand and run by onnxruntime.

Why onnxruntime for a matrix product: its own sgemm (MLAS) is measured here at about faiss' speed,
where numpy's OpenBLAS matmul takes ~1.5x longer on the same 1,000 x 1M x 512 product, and its TopK
selects the best k of every score row in the same run (numpy's argpartition over whole score
chunks costs more than the product itself).

Why by hand: the `onnx` package is only in the export extra, and the runtime needs just a few
protobuf messages. Field numbers are those of onnx/onnx.proto (checked in tests against the
`onnx` package, which parses these bytes back).
"""

from __future__ import annotations

import threading

# onnx.proto TensorProto.DataType
FLOAT, INT64 = 1, 7
# AttributeProto.AttributeType
_ATTR_INT = 2
IR_VERSION = 8
OPSET = 17


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values are encoded as their two's complement
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _varint((field << 3) | 2) + _varint(len(value)) + value


def _attr_int(name: str, value: int) -> bytes:
    # AttributeProto: name=1, i=3, type=20
    return _bytes(1, name) + _int(3, value) + _int(20, _ATTR_INT)


def _node(op: str, inputs: list[str], outputs: list[str], attrs: list[bytes] = ()) -> bytes:
    # NodeProto: input=1, output=2, name=3, op_type=4, attribute=5
    body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    body += _bytes(3, f"{op}_{outputs[0]}") + _bytes(4, op) + b"".join(_bytes(5, a) for a in attrs)
    return body


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    # ValueInfoProto: name=1, type=2 -> TypeProto.tensor_type=1 -> elem_type=1, shape=2 -> dim=1
    shape = b"".join(
        _bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims
    )
    tensor = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor))


def _model(nodes: list[bytes], inputs: list[bytes], outputs: list[bytes], name: str) -> bytes:
    # GraphProto: node=1, name=2, input=11, output=12
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, name)
    graph += b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs)
    # ModelProto: ir_version=1, producer_name=2, graph=7, opset_import=8 (domain=1, version=2)
    return _int(1, IR_VERSION) + _bytes(2, "fastclip.retrieval") + _bytes(7, graph) + _bytes(8, _int(2, OPSET))


def scores_graph() -> bytes:
    """scores (n, m) = a (n, d) @ b (m, d)^T."""
    return _model(
        [_node("Gemm", ["a", "b"], ["scores"], [_attr_int("transB", 1)])],
        [_value_info("a", FLOAT, ["n", "d"]), _value_info("b", FLOAT, ["m", "d"])],
        [_value_info("scores", FLOAT, ["n", "m"])],
        "fastclip_scores",
    )


def topk_graph() -> bytes:
    """The k best of a (n, d) @ b (m, d)^T per row: values and indices, best first; and sum(b).

    ONNX TopK breaks ties by index (the lower index comes first), which keeps results deterministic.
    onnxruntime's TopK silently passes over NaN scores, so the sum of b (NaN or inf when any entry
    is) lets the caller refuse a non-finite corpus row for the price of one threaded reduction.
    """
    return _model(
        [
            _node("Gemm", ["a", "b"], ["scores"], [_attr_int("transB", 1)]),
            _node("TopK", ["scores", "k"], ["values", "indices"],
                  [_attr_int("axis", -1), _attr_int("largest", 1), _attr_int("sorted", 1)]),
            _node("ReduceSum", ["b"], ["total"], [_attr_int("keepdims", 0)]),
        ],
        [_value_info("a", FLOAT, ["n", "d"]), _value_info("b", FLOAT, ["m", "d"]), _value_info("k", INT64, [1])],
        [_value_info("values", FLOAT, ["n", "kk"]), _value_info("indices", INT64, ["n", "kk"]),
         _value_info("total", FLOAT, [])],
        "fastclip_topk",
    )


_sessions: dict[tuple[str, int | None], object] = {}
_lock = threading.Lock()


def session(name: str, threads: int | None = None):
    """One CPU InferenceSession per graph (and thread count), made once per process."""
    key = (name, threads)
    with _lock:
        if key not in _sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads:
                opts.intra_op_num_threads = threads
            graph = {"scores": scores_graph, "topk": topk_graph}[name]()
            _sessions[key] = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        return _sessions[key]


__all__ = ["scores_graph", "session", "topk_graph"]

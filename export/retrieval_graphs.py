"""Build the two small ONNX graphs `fastclip.retrieval` runs, and write them into the runtime's package data.

    python -m fastclip_export.retrieval_graphs      # rewrites fastclip/retrieval/{scores,topk}.onnx

The runtime ships the files and never imports `onnx` (see fastclip/retrieval/_graphs.py for the install-size
figures behind that choice); tests/test_retrieval.py rebuilds them here and compares bytes, so a change below
that is not written out fails there.
"""

from __future__ import annotations

from onnx import TensorProto, checker, helper

IR_VERSION = 8
OPSET = 17


def _model(nodes, inputs, outputs, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, producer_name="fastclip.retrieval", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def build() -> dict[str, bytes]:
    """{"scores": ..., "topk": ...}: each graph serialized.

    scores: scores (n, m) = a (n, d) @ b (m, d)^T.
    topk: the k best of that product per row, values and indices, best first; and sum(b).
    ONNX TopK breaks ties by index (the lower index comes first), which keeps results deterministic.
    onnxruntime's TopK silently passes over NaN scores, so the sum of b (NaN or inf when any entry
    is) lets the caller refuse a non-finite corpus row for the price of one threaded reduction.
    """
    def tensor(name, elem_type, dims):
        return helper.make_tensor_value_info(name, elem_type, dims)

    gemm = helper.make_node("Gemm", ["a", "b"], ["scores"], name="Gemm_scores", transB=1)
    ab = [tensor("a", TensorProto.FLOAT, ["n", "d"]), tensor("b", TensorProto.FLOAT, ["m", "d"])]
    return {
        "scores": _model([gemm], ab, [tensor("scores", TensorProto.FLOAT, ["n", "m"])], "fastclip_scores"),
        "topk": _model(
            [gemm,
             helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="TopK_values",
                              axis=-1, largest=1, sorted=1),
             helper.make_node("ReduceSum", ["b"], ["total"], name="ReduceSum_total", keepdims=0)],
            ab + [tensor("k", TensorProto.INT64, [1])],
            [tensor("values", TensorProto.FLOAT, ["n", "kk"]), tensor("indices", TensorProto.INT64, ["n", "kk"]),
             tensor("total", TensorProto.FLOAT, [])],
            "fastclip_topk",
        ),
    }


def main() -> None:
    from fastclip.retrieval._graphs import graph_path

    for name, data in build().items():
        path = graph_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"{path}: {len(data)} bytes")


if __name__ == "__main__":
    main()

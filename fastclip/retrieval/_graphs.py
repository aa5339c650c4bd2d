"""Two tiny ONNX graphs (scores = Gemm; scores + TopK), shipped as package data and run by onnxruntime.

Why onnxruntime for a matrix product: its own sgemm (MLAS) is measured here at about faiss' speed,
where numpy's OpenBLAS matmul takes ~1.5x longer on the same 1,000 x 1M x 512 product, and its TopK
selects the best k of every score row in the same run (numpy's argpartition over whole score
chunks costs more than the product itself).

Why package data, built with `onnx` by fastclip_export.retrieval_graphs (which documents the graphs),
and not `onnx` at run time: measured with onnx 1.23.2 on Linux x86_64 / CPython 3.11, depending on it
would add an 8.9 MB wheel, 31 MB installed, plus ml_dtypes (1.9 MB): about 33 MB on a 515 MB install
and 13 % of the 260 MB CPU-only target, for two files of under 400 bytes. (protobuf, which `onnx`
also needs, already comes with onnxruntime.)
"""

from __future__ import annotations

import threading
from pathlib import Path

NAMES = ("scores", "topk")


def graph_path(name: str) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown graph {name!r}: one of {', '.join(NAMES)}")
    return Path(__file__).resolve().parent / f"{name}.onnx"


def graph(name: str) -> bytes:
    """The serialized graph `name` ("scores" or "topk")."""
    path = graph_path(name)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing (package data of fastclip): reinstall fastclip, or in a checkout run "
            "`python -m fastclip_export.retrieval_graphs`"
        ) from None


_sessions: dict[tuple[str, int | None], object] = {}
_lock = threading.Lock()


def session(name: str, threads: int | None = None):
    """One CPU InferenceSession per graph (and thread count), made once per process."""
    key = (name, threads)
    with _lock:
        if key not in _sessions:
            from ..providers import ort  # onnxruntime, checked

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads:
                opts.intra_op_num_threads = threads
            _sessions[key] = ort.InferenceSession(graph(name), opts, providers=["CPUExecutionProvider"])
        return _sessions[key]


__all__ = ["NAMES", "graph", "graph_path", "session"]

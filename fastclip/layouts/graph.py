"""What a published folder's files say: JSON configs and an ONNX graph's inputs and outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelError, first_line
from ..manifest import Manifest, parse

__all__ = ["read_json", "graph_io", "pick_output", "manifest_from"]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got a JSON {type(data).__name__}")
    return data


def graph_io(model_path: Path) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """Input and output (name, shape) of an ONNX graph, read without loading the weights."""
    from ..providers import ort  # onnxruntime, checked: a broken install names its fix

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # A CPU session with no optimization is the cheapest reliable reader of names and shapes.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        s = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc)
        raise ModelError(f"{model_path}: onnxruntime could not load it: {first}") from None
    return [(i.name, i.shape) for i in s.get_inputs()], [(o.name, o.shape) for o in s.get_outputs()]


def pick_output(outputs: list[tuple[str, list]], preferred: str, where: str) -> tuple[str, int]:
    rank2 = [(n, s) for n, s in outputs if len(s) == 2]
    for n, s in rank2:
        if n == preferred:
            return n, s[1]
    if rank2:
        return rank2[0][0], rank2[0][1]
    raise ModelError(f"{where}: no (batch, dim) output in the graph; outputs are {outputs}")


def manifest_from(folder: Path, derive: Callable[[Path], dict[str, Any]], layout: str) -> Manifest:
    """The manifest a reader's `derive(folder)` writes, checked; config files of an unexpected shape (a list
    where an object was due, a missing key) are a ModelError naming the layout, not a traceback."""
    try:
        derived = derive(folder)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"{folder}: malformed {layout} folder files ({type(exc).__name__}: {exc})") from None
    return parse(derived, origin=str(folder))

"""Device choice and the torch-free promise, checked in fresh interpreters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from fastclip import ModelError, TextEmbedding
from fastclip.session import CPU, CUDA, cuda_device_count, default_providers, resolve_providers


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ})


def test_default_providers_match_what_the_driver_reports():
    providers, reason = default_providers()
    count, why = cuda_device_count()
    if CUDA not in ort.get_available_providers():
        assert providers == [CPU] and "no CUDA provider" in reason
    elif count == 0:
        # onnxruntime-gpu without a GPU: CUDA is listed, yet we must not ask for it.
        assert providers == [CPU] and why and why in reason
    else:
        assert providers[0] == CUDA


def test_one_clean_log_line_and_no_onnxruntime_noise(tiny_openclip_export):
    code = f"""
import logging; logging.basicConfig(level=logging.INFO, format="%(message)s")
from fastclip import CLIP
clip = CLIP({str(tiny_openclip_export)!r})
print(clip.images.device, clip.texts.device)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("fastclip:")]
    assert len(ours) == 2, lines  # one per tower, saying where it runs and in which precision
    assert all(("CPU" in line or "CUDA" in line) and "fp32" in line for line in ours)
    assert not [line for line in lines if not line.startswith("fastclip:")], lines  # no red onnxruntime errors


def test_import_fastclip_never_imports_torch(tiny_openclip_export):
    import importlib.util

    assert importlib.util.find_spec("torch") is not None, "this test needs torch installed to mean anything"
    code = f"""
import sys
import fastclip, fastclip.cli
from fastclip import ImageEmbedding, TextEmbedding
import numpy as np
vec = next(ImageEmbedding({str(tiny_openclip_export)!r}).embed([np.zeros((64, 80, 3), np.uint8)]))
vec = next(TextEmbedding({str(tiny_openclip_export)!r}).embed(["a dog"]))
bad = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "transformers", "open_clip", "torchvision"))]
assert not bad, bad
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --------------------------------------------------------------------------- one object, one model's bytes


def _tower(folder, verify=False):
    from fastclip.model import load_manifest
    from fastclip.session import open_tower

    spec = load_manifest(folder).text
    return spec, open_tower(folder, spec, name="text", providers=[CPU], verify=verify, announce=False)


def _vectors(tower, spec):
    ids = np.array([[spec.bos_token_id, 320, 1929, spec.eos_token_id]], dtype=np.int64)
    return tower.session.run([spec.output_name], {spec.input_name: ids})[0]


@pytest.mark.parametrize("verify", [False, True])
def test_reopen_gives_the_same_model_even_after_a_rename_over(tiny_openclip_export, tmp_path, verify):
    folder = shutil.copytree(tiny_openclip_export, tmp_path / "m")
    spec, first = _tower(folder, verify=verify)
    want = _vectors(first, spec)
    again = first.reopen(threads=1)
    np.testing.assert_array_equal(_vectors(again, spec), want)
    assert again.session.get_session_options().intra_op_num_threads == 1
    # Replace the file the atomic way (write beside, rename over): another model, here garbage.
    model = folder / "text" / "model.onnx"
    (folder / "text" / "new.onnx").write_bytes(os.urandom(model.stat().st_size))
    os.replace(folder / "text" / "new.onnx", model)
    third = first.reopen(threads=1)  # from the bytes still held open: the model this object verified
    np.testing.assert_array_equal(_vectors(third, spec), want)
    for t in (first, again, third):
        t.close()


def test_reopen_refuses_a_file_rewritten_in_place(tiny_openclip_export, tiny_hf_export, tmp_path):
    folder = shutil.copytree(tiny_openclip_export, tmp_path / "m")
    spec, first = _tower(folder)
    model = folder / "text" / "model.onnx"
    with open(model, "r+b") as f:  # same inode, new bytes: the old ones are gone
        f.write(b"\x00" * 64)
    with pytest.raises(ModelError, match="modified in place"):
        first.reopen()
    first.close()


def test_text_embedding_reopen_after_replacement_keeps_vectors(tiny_openclip_export, tmp_path):
    # The shape bulk-core's lazily opened second session takes: TextEmbedding's tower, reopened later.
    folder = shutil.copytree(tiny_openclip_export, tmp_path / "m")
    model = TextEmbedding(folder)
    want = np.stack(list(model.embed(["a dog", "a cat"])))
    other = tmp_path / "other.onnx"
    shutil.copy(tiny_openclip_export / "vision" / "model.onnx", other)
    os.replace(other, folder / "text" / "model.onnx")
    second = model._tower.reopen(threads=1)
    ids = model.tokenize(["a dog", "a cat"])
    got = second.session.run([model.spec.output_name], {model.spec.input_name: ids})[0]
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_providers_from_fastembeds_cuda_and_device_ids():
    assert resolve_providers(None) == (None, False)  # default_providers decides
    assert resolve_providers(None, "auto", [2, 3]) == ([(CUDA, {"device_id": 2}), CPU], False)
    assert resolve_providers(None, True, [4]) == ([(CUDA, {"device_id": 4}), CPU], True)
    assert resolve_providers(None, True) == ([(CUDA, {"device_id": 0}), CPU], True)
    assert resolve_providers(None, False, [1]) == ([CPU], False)
    # device_ids[0] also places providers given by name (a pool worker gets its own id), options kept;
    # a CPU-only list stays on the CPU.
    assert resolve_providers([CUDA, CPU], None, [1]) == ([(CUDA, {"device_id": 1}), CPU], False)
    assert resolve_providers([(CUDA, {"gpu_mem_limit": 5}), CPU], None, [1]) == (
        [(CUDA, {"gpu_mem_limit": 5, "device_id": 1}), CPU], False)
    assert resolve_providers([CPU], None, [1]) == ([CPU], False)
    with pytest.raises(ValueError, match="either providers= or cuda="):
        resolve_providers([CPU], True)
    with pytest.raises(ValueError, match="cuda must be"):
        resolve_providers(None, "gpu")

"""Device choice and the torch-free promise, checked in fresh interpreters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import fastclip.providers as providers_mod
import fastclip.session as session_mod
from fastclip import CLIP, ImageEmbedding, ModelError, TextEmbedding
from fastclip.model import load_manifest
from fastclip.providers import CPU, CUDA, cuda_device_count, default_providers, resolve_providers
from fastclip.session import pick_precision
from support.parity import assert_parity
from support.photos import SENTENCES, cosines, write_photos


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


class _FakeLibcuda:
    """libcuda's two calls the probe makes, answering as a driver in the given state would."""

    def __init__(self, init_status: int, count: int | None):
        self.init_status, self.count = init_status, count

    def cuInit(self, flags):  # noqa: N802 - the driver's name
        return self.init_status

    def cuDeviceGetCount(self, ref):  # noqa: N802
        if self.count is None:
            return 100  # CUDA_ERROR_NO_DEVICE
        ref._obj.value = self.count
        return 0


@pytest.mark.parametrize("driver, want", [
    (None, (0, "no CUDA driver (libcuda) on this machine")),
    (_FakeLibcuda(3, 1), (0, "the CUDA driver did not initialize (cuInit failed)")),
    (_FakeLibcuda(0, None), (0, "the CUDA driver reports no device")),
    (_FakeLibcuda(0, 0), (0, "the CUDA driver reports no device")),
    (_FakeLibcuda(0, 2), (2, "")),
    (object(), None),  # a stub library without the symbols
])
def test_driver_probe_reads_libcuda(monkeypatch, driver, want):
    """Each state of the driver, whatever this machine has: the probe's answer and its reason."""
    def load(name):
        if driver is None:
            raise OSError(f"{name}: cannot open shared object file")
        return driver

    monkeypatch.setattr(providers_mod.ctypes, "CDLL", load)
    count, reason = providers_mod.cuda_device_count.__wrapped__()
    if want is None:
        assert count == 0 and reason.startswith("the CUDA driver is unusable"), reason
    else:
        assert (count, reason) == want


@pytest.mark.parametrize("listed, probe, want", [
    ([CPU], (2, ""), ([CPU], "this onnxruntime build has no CUDA provider")),
    ([CUDA, CPU], (0, "no CUDA driver (libcuda) on this machine"),
     ([CPU], "no CUDA driver (libcuda) on this machine; CUDAExecutionProvider is listed but cannot run")),
    ([CUDA, CPU], (2, ""), ([CUDA, CPU], "2 CUDA device(s) found")),
])
def test_default_providers_ask_for_cuda_only_when_the_driver_answers(monkeypatch, listed, probe, want):
    monkeypatch.setattr(providers_mod.ort, "get_available_providers", lambda: listed)
    monkeypatch.setattr(providers_mod, "cuda_device_count", lambda: probe)
    assert default_providers() == want


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


# --------------------------------------------------------------------------- precision variants, CUDA fallback


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def test_int8_is_never_picked_unless_asked_even_when_the_folder_holds_it(tiny_variants_export):
    folder = tiny_variants_export
    m = load_manifest(folder)
    assert set(m.vision.files) == set(m.text.files) == {"fp32", "fp16", "int8"}
    for cls in (ImageEmbedding, TextEmbedding):
        for options in ({}, {"providers": [CPU]}, {"cuda": False}):
            model = cls(folder, **options)
            assert (model.precision, model._tower.path.name) == ("fp32", "model.onnx"), (cls, options)
    clip = CLIP(folder)
    assert clip.images.precision == clip.texts.precision == "fp32"
    # The rule itself: fp16 for a GPU, fp32 for a CPU; a folder without fp32 is an error on CPU, not int8.
    assert pick_precision(m.vision, "cuda", None, "w") == "fp16"
    assert pick_precision(m.vision, "cpu", None, "w") == "fp32"
    assert pick_precision(m.vision, "cpu", "int8", "w") == "int8"
    no_fp32 = type(m.vision)(**{**m.vision.__dict__, "files": {k: v for k, v in m.vision.files.items() if k != "fp32"}})
    with pytest.raises(ModelError, match="no fp32 model"):
        pick_precision(no_fp32, "cpu", None, "w")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precisions_run_through_the_runtime_within_the_exports_tolerances(
        tiny_variants_export, photo_files, precision):
    """Both towers, loaded by name through the public classes: the file asked for runs, and its vectors stay
    within the thresholds the export recorded for it against fp32 (cosine, max abs diff / max norm)."""
    folder = tiny_variants_export
    m = load_manifest(folder)
    for cls, tower, items in ((ImageEmbedding, m.vision, photo_files), (TextEmbedding, m.text, SENTENCES)):
        ref = np.stack(list(cls(folder).embed(items, normalize=False)))
        model = cls(folder, precision=precision)
        assert model.precision == precision and model._tower.path.name == f"model_{precision}.onnx"
        got = np.stack(list(model.embed(items, normalize=False)))
        v = tower.verification[precision]
        diff = np.abs(got - ref).max()
        assert cosines(got, ref).min() >= v.threshold_cosine, (cls.__name__, precision)
        assert diff <= v.threshold_abs_rel * np.linalg.norm(ref, axis=1).max(), (cls.__name__, precision)
        assert diff > 1e-6 * np.abs(ref).max()  # really another graph than fp32
        assert_parity(got, ref, f"{precision} {'image' if cls is ImageEmbedding else 'text'}", "against fp32")
        normalized = np.stack(list(model.embed(items)))
        np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)


def _cuda_that_falls_back(monkeypatch) -> list:
    """CUDA 'found' by the probe, but every session onnxruntime builds runs on CPU: what onnxruntime-gpu
    does when the driver answers but the CUDA / cuDNN libraries do not load. Returns the log of
    (file, providers asked for) of every session opened."""
    monkeypatch.setattr(session_mod, "default_providers", lambda: ([CUDA, CPU], "1 CUDA device(s) found"))
    monkeypatch.setattr(providers_mod, "_announced", set())
    opened = []
    real = session_mod._session

    def falls_back(source, entry, providers, *args):
        opened.append((entry.path, list(providers)))
        return real(source, entry, [p for p in providers if p != CUDA], *args)

    monkeypatch.setattr(session_mod, "_session", falls_back)
    return opened


def test_cuda_fallback_reopens_fp32_on_cpu(tiny_variants_export, photo_files, monkeypatch, caplog):
    """fp16 is picked for the GPU; the session comes back on CPU; the tower is reopened as fp32 (fp16 on a
    CPU is the slow, less exact choice) and the one log line says what happened."""
    import logging

    folder = tiny_variants_export
    want = np.stack(list(ImageEmbedding(folder, providers=[CPU]).embed(photo_files)))
    opened = _cuda_that_falls_back(monkeypatch)
    with caplog.at_level(logging.INFO, logger="fastclip"):
        model = ImageEmbedding(folder)
    assert (model.precision, model.device, model._tower.path.name) == ("fp32", "cpu", "model.onnx")
    assert opened == [("vision/model_fp16.onnx", [CUDA, CPU]), ("vision/model.onnx", [CPU])]
    lines = [r.getMessage() for r in caplog.records if r.name == "fastclip"]
    assert len(lines) == 1 and "vision tower on CPU" in lines[0] and "fell back" in lines[0], lines
    assert lines[0].endswith(", fp32"), lines
    np.testing.assert_array_equal(np.stack(list(model.embed(photo_files))), want)

    # fp16 asked for by name stays fp16 (the user's choice); cuda=True refuses the CPU run instead.
    opened.clear()
    pinned = TextEmbedding(folder, precision="fp16")
    assert (pinned.precision, pinned.device) == ("fp16", "cpu") and opened == [("text/model_fp16.onnx", [CUDA, CPU])]
    with pytest.raises(ModelError, match="cuda=True"):
        TextEmbedding(folder, cuda=True)


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

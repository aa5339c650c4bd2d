"""Device choice and the torch-free promise, checked in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

import onnxruntime as ort

from fastclip.session import CPU, CUDA, cuda_device_count, default_providers


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

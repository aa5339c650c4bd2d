"""The conventions every surface shares (classes, process pool, Ray, CLI, server), typed once.

No imports: the CLI reads these for its --help without loading numpy, Pillow or onnxruntime.
"""

__all__ = ["IMAGE_BATCH", "TEXT_BATCH", "ERRORS", "PRECISIONS", "DISTRIBUTION"]

# Default inputs per model call.
IMAGE_BATCH = 32
TEXT_BATCH = 256
# What a batch call does with an input it cannot embed: raise its error, or skip it (None in its row).
ERRORS = ("raise", "skip")
# The model variants a folder may hold (export writes them, the runtime and the CLI pick among them).
PRECISIONS = ("fp32", "fp16", "int8")
# Our distribution (pyproject.toml's [project] name; cpu/ builds it with "-cpu" added). PyPI's `fastclip` is
# another project ("A private library for fastclip"): installing it writes over our fastclip/__init__.py, so no
# hint may name it. fastclip.hints builds every `pip install` a message gives.
DISTRIBUTION = "fastclip-onnx"

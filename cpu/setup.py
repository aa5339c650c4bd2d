"""fastclip-onnx-cpu (../pyproject.toml's name + "-cpu"): the fastclip code with onnxruntime (CPU) in place of
onnxruntime-gpu.

The pair follows fastembed / fastembed-gpu: one code base, two distributions that differ only in the
onnxruntime they pull (a venv with onnxruntime-gpu weighs ~515 MB, 340 MB of it that wheel; fastembed's CPU
install ~252 MB). Name, version, packages, their data, extras and the command are read from ../pyproject.toml, so
the two cannot drift apart; only the GPU requirements are swapped for their CPU twins (fastembed-gpu in
the bench extra too, which would otherwise pull onnxruntime-gpu back in).

    pip install ./cpu                # from the repository root
    pip install "./cpu[export]"      # extras as in fastclip-onnx's
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
GPU_TO_CPU = {"onnxruntime-gpu": "onnxruntime", "fastembed-gpu": "fastembed"}


def cpu_requirements(requirements: list[str]) -> list[str]:
    """The GPU twin becomes the CPU one on every platform; the CPU one's platform-limited line goes."""
    out = []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
        if name.lower() in GPU_TO_CPU:
            out.append(GPU_TO_CPU[name.lower()] + requirement[len(name):].split(";")[0].rstrip())
        elif name.lower() not in GPU_TO_CPU.values():
            out.append(requirement)
    return out


# pip builds a local folder in place, and setuptools packs whatever build/lib holds: a module deleted from
# the source since the last build would ship again. Start each build from nothing.
shutil.rmtree(Path(__file__).resolve().parent / "build", ignore_errors=True)


def relative_to_here(folder: str) -> str:
    return str(Path("..") / folder)


setup(
    name=PROJECT["name"] + "-cpu",
    version=PROJECT["version"],
    description=PROJECT["description"] + " CPU build: onnxruntime instead of onnxruntime-gpu.",
    long_description=(ROOT / PROJECT["readme"]).read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=PROJECT["requires-python"],
    license=PROJECT["license"],
    install_requires=cpu_requirements(PROJECT["dependencies"]),
    extras_require={extra: cpu_requirements(reqs) for extra, reqs in PROJECT["optional-dependencies"].items()},
    package_dir={package: relative_to_here(folder) for package, folder in SETUPTOOLS["package-dir"].items()},
    packages=SETUPTOOLS["packages"],
    package_data=SETUPTOOLS.get("package-data", {}),
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in PROJECT["scripts"].items()]},
)

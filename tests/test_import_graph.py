"""The arrows point one way (benchmarks/import_graph.py draws them): no import cycle under fastclip/, and
the runtime (the process pool included) imports nothing that sits above it (bulk, serve, retrieval, cli),
not even inside a function."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "import_graph.py"
ABOVE = ("fastclip.bulk", "fastclip.serve", "fastclip.retrieval", "fastclip.cli")
# The package's front doors, not the runtime: ray.py re-exports fastclip.bulk.ray, __main__ runs the CLI.
# The package's __init__ is a lazy re-export of runtime names and is held to the runtime's rule.
FRONT = {"fastclip.__main__", "fastclip.ray"}


def _above(module: str) -> bool:
    """In a package above the runtime: whole dotted segments, so fastclip.clip is not fastclip.cli."""
    return any(module == a or module.startswith(a + ".") for a in ABOVE)


def _script():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_finds_cycles_and_lazy_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")  # inside a function: still an edge
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nfrom .. import b\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n")  # no edge
    graph = _script().graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a", "pkg.b"}
    assert graph["pkg.d"] == set()
    assert sorted(map(tuple, _script().cycles(graph))) == [("pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"),
                                                           ("pkg.b", "pkg.sub.c", "pkg.b")]
    run = subprocess.run([sys.executable, str(SCRIPT), str(pkg)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "cycle: " in run.stdout


def test_no_import_cycle_under_fastclip():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, [line for line in run.stdout.splitlines() if line.startswith("cycle")]
    assert "fastclip.pool -> fastclip.worker" in run.stdout.splitlines()  # the pool builds models from specs


def test_the_runtime_imports_nothing_above_it():
    graph = _script().graph(ROOT / "fastclip")
    runtime = [m for m in graph if m not in FRONT and not _above(m)]
    assert {"fastclip", "fastclip.clip", "fastclip.embedding", "fastclip.pool", "fastclip.runner", "fastclip.session",
            "fastclip.tower"} <= set(runtime)
    assert [(m, t) for m in runtime for t in sorted(graph[m]) if _above(t)] == []
    # The pool reaches the runtime through its public names only.
    pool = graph["fastclip.pool"]
    assert pool <= {"fastclip.batch", "fastclip.errors", "fastclip.runner", "fastclip.worker"}, pool


def test_the_cli_help_loads_no_model_machinery():
    """`fastclip --help` and the package's front door import neither onnxruntime, Pillow nor tokenizers."""
    code = ("import sys, contextlib, io, fastclip, fastclip.cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    fastclip.cli.main(['--help'])\n"
            "print(sorted(m for m in ('onnxruntime', 'PIL', 'tokenizers', 'numpy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == "[]", run.stdout

"""The import graph of fastclip/ (imports inside functions count, `if TYPE_CHECKING:` ones do not): one
edge a line, then its cycles.

    python benchmarks/import_graph.py [PACKAGE_DIR]     # exits 1 when there is a cycle
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def graph(root: Path) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, relative imports resolved, `from . import sub` to the submodule."""
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # `if TYPE_CHECKING:` imports never run (annotations only): not an arrow.
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in
                       ast.unparse(block.test) for child in block.body for n in ast.walk(child)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                stem = ".".join(p for p in (base, node.module) if p)
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a module: its nearest listed module
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first walk: empty exactly when the graph has no cycle."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "fastclip")
    edges = graph(root)
    for module in sorted(edges):
        for target in sorted(edges[module]):
            print(f"{module} -> {target}")
    loops = cycles(edges)
    for loop in loops:
        print("cycle: " + " -> ".join(loop))
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} edges, {len(loops)} cycle(s)")
    sys.exit(1 if loops else 0)

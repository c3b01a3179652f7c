"""Fail, naming them, when modules of homing import each other in a circle.

Every import counts — at module level, inside functions and under ``TYPE_CHECKING`` — as
grimp (import-linter's graph) records them. Run by ``make lint``.
"""

from __future__ import annotations

import sys

import grimp


def _imported(graph: grimp.ImportGraph, module: str) -> set[str]:
    """What ``module`` imports. ``from pkg import sub`` counts ``pkg`` too: it runs the
    package's ``__init__`` first (grimp records only ``pkg.sub``)."""
    found = set(graph.find_modules_directly_imported_by(module))
    for target in list(found):
        parent = target.rpartition(".")[0]
        if not parent or parent == module:
            continue
        for detail in graph.get_import_details(importer=module, imported=target):
            if detail["line_contents"].startswith(f"from {parent} import "):
                found.add(parent)
    return found


def cycles(package: str = "homing") -> list[list[str]]:
    """The import circles among ``package``'s modules (strongly connected components)."""
    graph = grimp.build_graph(package)
    modules = sorted(graph.modules)
    edges = {m: sorted(_imported(graph, m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in edges.get(module, []):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for module in modules:
        if module not in index:
            visit(module)
    return found


def main() -> int:
    found = cycles()
    for component in found:
        print("import circle: " + " <-> ".join(component), file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())

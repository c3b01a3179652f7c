"""The settings table (README.md, included in docs/reference.md) and the code agree, both ways.

What the code reads is found in its syntax tree: ``os.getenv("X")``, ``ENV.get("X")``,
``ENV["X"]``, ``"X" in ENV`` and ``helper(ENV, "X", ...)``, where ``ENV`` is ``os.environ`` or
a name ``env``/``environ`` (the mapping a function was given, or ``os.environ``), plus every
field of :class:`homing.settings.Settings` under the variable ``Settings.from_env()`` reads.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from homing.settings import Settings
from tests.support import ROOT

#: The code whose reads the table documents: the library and the reference service.
SOURCES = (ROOT / "src" / "homing", ROOT / "examples")
_NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def table_variables(readme: str) -> set[str]:
    """The variables named in the first column of the settings table."""
    start = readme.index("[start:settings]")
    table = readme[start : readme.index("[end:settings]", start)]
    rows = [line for line in table.splitlines() if line.startswith("|")][2:]  # header, rule
    assert rows, "the settings table has no rows"
    return {name for row in rows for name in _NAME.findall(row.split("|")[1])}


def _is_environment(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id in ("env", "environ")


def _constant(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _read_name(node: ast.AST) -> str | None:
    """The variable ``node`` reads, if it is a read of the environment by a constant name."""
    if isinstance(node, ast.Call) and node.args:
        function = node.func
        if isinstance(function, ast.Attribute) and (
            function.attr == "getenv"
            or (function.attr == "get" and _is_environment(function.value))
        ):
            return _constant(node.args[0])
        if len(node.args) >= 2 and _is_environment(node.args[0]):
            return _constant(node.args[1])
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        return _constant(node.slice) if _is_environment(node.value) else None
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.ops[0], ast.In | ast.NotIn)
        and _is_environment(node.comparators[0])
    ):
        return _constant(node.left)
    return None


def _reads(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        name = _read_name(node)
        if name is not None:
            yield name


def code_variables() -> dict[str, list[str]]:
    """Each variable the code reads, with where."""
    found: dict[str, list[str]] = {}
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            for name in _reads(ast.parse(path.read_text(), str(path))):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    for setting in fields(Settings):
        found.setdefault(Settings.variable(setting.name), []).append("homing.settings.Settings")
    return found


def test_every_variable_the_code_reads_is_in_the_table() -> None:
    documented = table_variables((ROOT / "README.md").read_text())
    missing = {name: where for name, where in code_variables().items() if name not in documented}
    assert not missing, f"read by the code, missing from README.md's settings table: {missing}"


def test_every_variable_in_the_table_is_read() -> None:
    read = code_variables()
    unread = table_variables((ROOT / "README.md").read_text()) - set(read)
    assert not unread, f"in README.md's settings table, read by no code: {sorted(unread)}"


def test_the_scan_sees_each_way_of_reading(tmp_path: Path) -> None:
    module = tmp_path / "reads.py"
    module.write_text(
        "import os\n"
        "def f(env):\n"
        "    os.getenv('A'); os.environ.get('B'); env['C']; 'D' in os.environ\n"
        "    'E' not in env; switch(env, 'F', 'on'); os.environ['G'] = 'set, not read'\n"
        "    other.get('H'); config['I']\n"
    )
    assert sorted(_reads(ast.parse(module.read_text()))) == ["A", "B", "C", "D", "E", "F"]


def test_the_table_is_read_from_its_rows_first_column() -> None:
    readme = (
        "<!-- --8<-- [start:settings] -->\n| variable | default | meaning |\n|---|---|---|\n"
        "| `PORT`, `HOST` | `8080` | where (`NOT_THIS`) |\n| `X_Y` (5) | | x |\n"
        "<!-- --8<-- [end:settings] -->\n| `AFTER` | | |\n"
    )
    assert table_variables(readme) == {"PORT", "HOST", "X_Y"}

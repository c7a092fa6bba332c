"""Benchmarks (and testkit/, which they import) do not reach into tests/: support code they share with the tests
lives in testkit/ (the launcher, the fake engine, the fake server). Every benchmarks/*.py and testkit/*.py is
parsed; a file fails, by name, when it imports a module that lives in tests/ (``from fakes import ...``,
``import tests.identity``) or puts a path under tests/ on ``sys.path`` (or PYTHONPATH).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
CHECKED = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "testkit").glob("*.py")])


def modules_in_tests() -> set[str]:
    """Names that resolve into tests/ once it is on sys.path: its modules at any depth (tests/ and its
    directories hold no packages; pytest puts each test directory on the path), and ``tests`` itself. A name that
    is also a module of benchmarks/ resolves there first (a benchmark's own directory leads sys.path) and is left
    out; testkit's modules are imported as ``testkit.x``, so its ``fakes`` does not excuse a bare ``fakes``."""
    own = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    return ({p.stem for p in TESTS.rglob("*.py")} - own) | {"tests"}


def _reaches_tests(node: ast.AST, tainted: set[str]) -> bool:
    """Whether an expression names tests/: a string constant with a path component ``tests``, or a variable
    bound to such an expression."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            if "tests" in Path(sub.value.replace("\\", "/")).parts:
                return True
        elif isinstance(sub, ast.Name) and sub.id in tainted:
            return True
    return False


def _is_sys_path(node: ast.AST) -> bool:
    """``sys.path`` itself, a slice of it, or one of its methods (``sys.path.insert``)."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name):
            return node.value.id == "sys"
        node = node.value
    return False


def _names_pythonpath(node: ast.AST) -> bool:
    return any(isinstance(s, ast.Constant) and s.value == "PYTHONPATH" for s in ast.walk(node))


def violations(source: str) -> list[str]:
    """What in ``source`` reaches tests/, one line each (empty when nothing does)."""
    tree = ast.parse(source)
    modules = modules_in_tests()
    found: list[str] = []
    tainted: set[str] = set()
    for _ in range(3):  # variables bound to paths under tests/, through a few assignments
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _reaches_tests(node.value, tainted):
                tainted |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in modules]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in modules:
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            target = f.value if isinstance(f, ast.Attribute) else f
            adds = _is_sys_path(target) or (isinstance(f, ast.Attribute) and f.attr == "addsitedir")
            if adds and any(_reaches_tests(a, tainted) for a in [*node.args, *(k.value for k in node.keywords)]):
                found.append(f"line {node.lineno}: puts tests/ on sys.path")
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            to_path = any(_is_sys_path(t) for t in targets)
            to_pythonpath = any(_names_pythonpath(t) for t in targets)
            if (to_path or to_pythonpath) and _reaches_tests(node.value, tainted):
                found.append(f"line {node.lineno}: puts tests/ on {'sys.path' if to_path else 'PYTHONPATH'}")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if k is not None and _names_pythonpath(k) and _reaches_tests(v, tainted):
                    found.append(f"line {node.lineno}: puts tests/ on PYTHONPATH")
    return sorted(found, key=lambda line: int(line.split(":")[0].removeprefix("line ")))


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_does_not_import_from_tests(path: Path) -> None:
    found = violations(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)} reaches into tests/ (move what it needs to testkit/):\n  " + (
        "\n  ".join(found)
    )


def test_the_check_sees_the_ways_in() -> None:
    """The check itself: each of these reaches tests/, and is reported."""
    bad = """
import sys
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO / "tests"))
sys.path.append(str(TESTS))
sys.path[:0] = ["tests/grpc"]
env = {"PYTHONPATH": str(TESTS)}
from fakes import FakeEngine
import identity
from tests.grpc.grpc_harness import running_server
"""
    found = violations(bad)
    assert len(found) == 7, found
    ok = """
import sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
import common
from testkit.fakes import FakeEngine
import grpc
"""
    assert violations(ok) == []

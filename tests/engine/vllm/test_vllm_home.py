"""Only bastion.engine.vllm touches vLLM: imports (also enforced by import-linter's vllm-home contract) and the
dotted strings that make vLLM load bastion code (scheduler_cls, the plugin entry point) or name vLLM code."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
from pathlib import Path

import bastion

PACKAGE = Path(bastion.__file__).parent
HOME = PACKAGE / "engine" / "vllm"
DOTTED = re.compile(r"^(vllm|bastion)(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?$")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "v1" not in p.relative_to(PACKAGE).parts[:1])


def _outside_home(path: Path) -> bool:
    return HOME not in path.parents


def test_only_the_vllm_home_imports_vllm() -> None:
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "vllm" or n.startswith("vllm.") for n in names) and _outside_home(path):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, f"vllm imported outside bastion/engine/vllm: {offenders}"


def _dotted_strings(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.match(node.value):
            out.append((node.lineno, node.value))
    return out


def test_no_string_outside_the_home_names_vllm_code() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
        for path in _modules()
        if _outside_home(path)
        for line, text in _dotted_strings(path)
        if text.startswith("vllm.") or text.startswith("bastion.engine.vllm.")
    ]
    assert not offenders, f"strings naming vLLM code outside bastion/engine/vllm: {offenders}"


def _resolve(dotted: str) -> object:
    module, _, attr = dotted.partition(":")
    if not attr:
        module, _, attr = module.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def test_every_dotted_bastion_string_handed_to_vllm_resolves() -> None:
    broken = []
    for path in _modules():
        for line, text in _dotted_strings(path):
            if text.startswith("bastion.engine.vllm."):
                try:
                    _resolve(text)
                except (ImportError, AttributeError) as exc:
                    broken.append(f"{path.relative_to(PACKAGE)}:{line}: {text!r} ({exc})")
    assert not broken, f"dotted names vLLM would load do not resolve: {broken}"


def test_the_plugin_entry_point_is_the_homes_register() -> None:
    (ep,) = [e for e in importlib.metadata.entry_points(group="vllm.general_plugins") if e.name == "bastion"]
    assert ep.value == "bastion.engine.vllm.plugin:register", "reinstall (make setup) or fix pyproject.toml"
    from bastion.engine.vllm.plugin import register

    assert ep.load() is register

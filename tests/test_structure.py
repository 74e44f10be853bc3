"""The package's structure, read from its source: data flows one way, private names stay private,
functions fit on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "htakl_jax"
MAX_FUNCTION_LINES = 60

# What each module may not import (directly): the run's setup, steps and analysis never reach
# back into the loop or the entry points above them.
UPWARD = {
    "htakl_jax.runs": {"train", "steps", "evaluate", "experiments", "main", "analysis"},
    "htakl_jax.steps": {"train", "evaluate", "experiments", "main", "analysis"},
    "htakl_jax.evaluate": {"train", "experiments", "main", "analysis"},
    "htakl_jax.config_validation": {"train", "steps", "evaluate", "experiments", "main"},
    "htakl_jax.analysis": {"train", "steps", "evaluate", "experiments", "main"},
}


def _modules(folder: Path) -> dict[str, ast.Module]:
    return {
        str(p.relative_to(ROOT)): ast.parse(p.read_text(), filename=str(p))
        for p in sorted(folder.rglob("*.py"))
    }


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _imported_htakl_modules(tree: ast.Module) -> set[str]:
    """Second-level htakl_jax names (`train`, `analysis`, ...) this module imports."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("htakl_jax"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("htakl_jax.")}
    return found


def test_data_flows_one_way():
    bad = []
    for path, tree in _modules(PACKAGE).items():
        name = _module_name(path)
        for prefix, forbidden in UPWARD.items():
            if name == prefix or name.startswith(prefix + "."):
                bad += [
                    f"{name} imports htakl_jax.{m}"
                    for m in _imported_htakl_modules(tree) & forbidden
                ]
    assert not bad, bad


def _private_uses(tree: ast.Module) -> list[str]:
    """`alias._name` where `alias` is an imported htakl_jax module, and `from htakl_jax... import
    _name`."""
    aliases, uses = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("htakl_jax"):
            aliases |= {a.asname or a.name for a in node.names}
            uses += [f"import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name.startswith("htakl_jax") and a.asname}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            uses.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    return uses


@pytest.mark.parametrize("folder", ["htakl_jax", "tests", "benchmarks"])
def test_no_private_names_cross_modules(folder):
    bad = {p: u for p, t in _modules(ROOT / folder).items() if (u := _private_uses(t))}
    assert not bad, bad


def test_functions_fit_on_a_screen():
    long = []
    for path, tree in _modules(PACKAGE).items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long

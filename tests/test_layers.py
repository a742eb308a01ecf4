"""The package's modules form the layers trainkit/__init__.py lists: none imports a module of a
higher layer, and their imports (at the top, inside functions, or for type checking alike)
have no cycle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import trainkit
from trainkit import LAYERS

PACKAGE = Path(trainkit.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
LEVEL = {module: level for level, modules in enumerate(LAYERS.values()) for module in modules}


def imported_modules(module: str) -> set[str]:
    """The trainkit modules `module` imports anywhere in its code."""
    return (imports_in((PACKAGE / f"{module}.py").read_text()) & set(MODULES)) - {module}


def imports_in(source: str) -> set[str]:
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "trainkit":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainkit."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("trainkit.")]
            found |= {name.split(".")[1] for name in names}
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_every_module_is_in_exactly_one_layer() -> None:
    listed = [module for modules in LAYERS.values() for module in modules]
    assert sorted(listed) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_a_higher_layer(module: str) -> None:
    higher = {m for m in GRAPH[module] if LEVEL[m] > LEVEL[module]}
    assert not higher, f"{module} ({list(LAYERS)[LEVEL[module]]}) imports {sorted(higher)}"


def test_the_imports_have_no_cycle() -> None:
    graphlib.TopologicalSorter(GRAPH).prepare()  # raises CycleError, naming the cycle


def test_the_checks_see_lazy_and_type_checking_imports_and_cycles() -> None:
    source = """
from typing import TYPE_CHECKING
import trainkit.errors
from trainkit import files as f, metrics
if TYPE_CHECKING:
    from trainkit.loop import FitState
def later():
    from trainkit.experiment import run
"""
    assert imports_in(source) == {"errors", "files", "metrics", "loop", "experiment"}
    planted = {**GRAPH, "config": GRAPH["config"] | {"experiment"}}  # experiment imports config
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(planted).prepare()

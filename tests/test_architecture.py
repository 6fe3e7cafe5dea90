"""The house's floors: the import graph of ``paglets_artifacts`` and ``workers``, read from the
source with ``ast`` (nothing is imported), has no cycle, and no import goes up a floor.

    python -m pytest tests/test_architecture.py -q     # how anyone checks the structure

Imports under ``if TYPE_CHECKING:`` are not edges (they never run). A module imported inside
a function is an edge like any other: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

#: The floors, lowest first: a module may import its own floor and those below.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "errors",
            "redaction",
            "schedule",
            "refs",
            "settings",
            "redis_client",
            "redis_server",
            "logging_setup",
            "origins",
        ),
    ),
    ("store", ("store",)),
    ("jobs", ("jobs",)),
    ("http", ("http",)),
    ("paglets host", ("paglets_host",)),
    ("command line", ("cli",)),
]
PACKAGE = "paglets_artifacts"


def modules() -> dict[str, Path]:
    found = {}
    for top, base in ((PACKAGE, ROOT / "src" / PACKAGE), ("workers", ROOT / "workers")):
        for path in sorted(base.rglob("*.py")):
            parts = (top, *path.relative_to(base).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def _type_checking_only(tree: ast.Module) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            skipped |= {id(inner) for inner in ast.walk(node)}
    return skipped


def imports_of(name: str) -> set[str]:
    """The project modules ``name`` imports (a package's ``from . import x`` is ``x``)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.add(submodule if submodule in MODULES else module)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def floor_of(name: str) -> int | None:
    """The floor of a ``paglets_artifacts`` module (``None`` for the package's public face
    and for ``workers``, which stand above every floor)."""
    if not name.startswith(PACKAGE + "."):
        return None
    first = name.split(".")[1]
    for number, (_label, members) in enumerate(FLOORS):
        if first in members:
            return number
    raise AssertionError(f"{name} is on no floor: add it to FLOORS in {__file__}")


def test_every_module_is_on_a_floor():
    for name in MODULES:
        floor_of(name)


def test_the_import_graph_has_no_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert cycles == []


def test_no_import_goes_up_a_floor_and_the_package_never_imports_workers():
    upward = []
    for name, targets in GRAPH.items():
        for target in targets:
            if name.startswith(PACKAGE) and target.startswith("workers"):
                upward.append(f"{name} -> {target}")
            mine, theirs = floor_of(name), floor_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{name} ({FLOORS[mine][0]}) -> {target} ({FLOORS[theirs][0]})")
    assert upward == []


@pytest.mark.parametrize(
    "module", ["paglets_artifacts.store.artifacts", "workers.actors", "paglets_artifacts.cli.commands"]
)
def test_the_graph_sees_the_imports_it_names(module):
    """The reader is not blind: modules known to import others are seen to."""
    assert GRAPH[module], f"no imports read from {module}"


def test_each_floor_but_the_foundation_is_a_package():
    for _label, members in FLOORS[1:]:
        for member in members:
            assert (ROOT / "src" / PACKAGE / member).is_dir() or (ROOT / "src" / PACKAGE / f"{member}.py").is_file()
    packages = {path.name for path in (ROOT / "src" / PACKAGE).iterdir() if (path / "__init__.py").is_file()}
    assert packages == {"store", "jobs", "http", "cli"}


def test_the_public_face_exports_exactly_its_all():
    import paglets_artifacts

    exported = set(paglets_artifacts.__all__)
    assert len(exported) == len(paglets_artifacts.__all__)  # no name twice
    missing = sorted(name for name in exported if not hasattr(paglets_artifacts, name))
    assert missing == []
    public = {
        name
        for name, value in vars(paglets_artifacts).items()
        if not name.startswith("_") and not isinstance(value, type(paglets_artifacts))
    }
    assert public == exported  # nothing public that __all__ does not name

"""The packages' one-way doors, read from the source: which of our packages each module imports (anywhere in it,
at the top or inside a function), and no import cycle between our modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness import REPO

OURS = ("billing", "models", "receiver", "consumer", "harness", "tests", "bench")
# What each package may import of ours (besides itself).
ALLOWED = {
    "billing": set(),
    "models": {"billing"},
    "receiver": {"billing", "models"},
    "consumer": {"billing", "models"},
    "harness": {"billing", "models", "receiver"},
    "bench": {"billing", "models", "receiver", "consumer", "harness"},
}


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, known: set[str] = frozenset()) -> set[str]:
    """The modules of ours the file imports, by dotted name: `from a.b import c` is `a.b.c` when that is one of
    the `known` modules, else `a.b`. No relative imports: every import says where it comes from."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: a relative import"
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                names.add(name if name in known else node.module)
    return {name for name in names if name.split(".")[0] in OURS}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package):
    wrong = {}
    for module, path in modules(package).items():
        others = {name.split(".")[0] for name in imports_of(path)} - {package}
        if others - ALLOWED[package]:
            wrong[module] = sorted(others - ALLOWED[package])
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}: {wrong}"


def test_no_import_cycle_between_our_modules():
    paths = {
        module: path
        for package in ("billing", "models", "receiver", "consumer")
        for module, path in modules(package).items()
    }
    graph = {module: imports_of(path, set(paths)) & set(paths) - {module} for module, path in paths.items()}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The checks above would fail: an import written inside a function is still found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from consumer.batch import apply_batch\n    import receiver.webhooks\n")
    assert imports_of(source, {"consumer.batch"}) == {"consumer.batch", "receiver.webhooks"}


def test_no_test_module_imports_a_test_module_or_a_conftest():
    """Shared test code lives in helper modules (`*_helpers.py`) and fixtures in conftest.py, never imported."""
    wrong = {
        module: sorted(name for name in imports_of(path) if name.rpartition(".")[2].startswith(("test_", "conftest")))
        for module, path in modules("tests").items()
    }
    assert not {module: names for module, names in wrong.items() if names}

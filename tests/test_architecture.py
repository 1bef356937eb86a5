"""The house rules of the package, checked on its source: no import cycle, no private name imported
across modules, no import hidden in a function body (except optional dependencies)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gradchain"
# Imported lazily on purpose: gradchain does not depend on them at run time.
OPTIONAL = {"optax", "matplotlib", "matplotlib.pyplot", "matplotlib.figure"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, imported names) of the module-level `from gradchain... import` statements."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gradchain":
            out.append((node.module, [a.name for a in node.names]))
    return out


def _edges(name: str) -> set[str]:
    """The gradchain modules `name` imports at module level (a package import counts for its submodule)."""
    edges = set()
    for module, names in _imports(MODULES[name]):
        for n in names:
            edges.add(f"{module}.{n}" if f"{module}.{n}" in MODULES else module)
    return edges - {name}


def test_no_import_cycle():
    # Package __init__ files only re-export; the graph that matters is between the modules.
    graph = {m: {e for e in _edges(m) if e in MODULES} for m in MODULES if not m.endswith("__init__")}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for e in sorted(graph.get(m, ())):
            if e in graph and not _is_package(e):
                if state.get(e) == 1:
                    pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(e) :], e]))
                if e not in state:
                    visit(e, [*stack, e])
        state[m] = 2

    for m in sorted(graph):
        if m not in state and not _is_package(m):
            visit(m, [m])


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_crosses_modules(name):
    for module, names in _imports(MODULES[name]):
        private = [n for n in names if n.startswith("_") and f"{module}.{n}" not in MODULES]
        assert not private, f"{name} imports private names {private} from {module}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_inside_functions(name):
    for node in ast.walk(MODULES[name]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    modules = [a.name for a in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    modules = [inner.module or ""]
                else:
                    continue
                hidden = [m for m in modules if m not in OPTIONAL]
                assert not hidden, f"{name}.{node.name} imports {hidden} inside its body"

"""The import rules that keep the layers readable, checked on every module's source (imports inside
functions included): data flows one way, and no two modules need each other."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: where each installed package's source lives (pyproject's package-dir)
PACKAGE_DIRS = {"arrcoc": ROOT / "arrcoc", "arrcoc.data": ROOT / "data", "arrcoc.callbacks": ROOT / "callbacks"}
#: the model core: pixels and text in, loss and allocation out; no training loop, no data loading
CORE = ("arrcoc.model", "arrcoc.encoder", "arrcoc.language_model", "arrcoc.scorers", "arrcoc.balancer",
        "arrcoc.allocator", "arrcoc.summary", "arrcoc.positions", "arrcoc.projector", "arrcoc.packing",
        "arrcoc.config")
#: what the model and the data path share
SHARED = ("arrcoc.presets", "arrcoc.processing")
#: commands that build runs as a user does
ENTRY_POINTS = ("arrcoc.cli", "arrcoc.demo", "arrcoc.bench.cli", "arrcoc.visualize")


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[0] in ("data", "callbacks") and package == "arrcoc":
                continue  # not inside arrcoc/ (they are top-level folders); listed under their own package
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((package, *parts))] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in its source: arrcoc's own as module names (a name
    imported from a package that is itself a module counts as that module), others as top-level names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            subs = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
            found |= subs if subs else {base}
    return {_own(m) or m.split(".")[0] for m in found}


def _own(module: str) -> str | None:
    """The arrcoc module ``module`` names (``arrcoc.data.shards.Skip`` -> ``arrcoc.data.shards``), or None."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _in(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in layer)


def _violations(sources: tuple[str, ...], allowed) -> list[str]:
    return sorted(f"{m} imports {dep}" for m, deps in GRAPH.items() if _in(m, sources) for dep in deps
                  if not allowed(dep))


def test_the_walk_sees_the_tree():
    assert {"arrcoc.model", "arrcoc.data.stream", "arrcoc.callbacks.budget", "arrcoc.scorers.base"} <= set(MODULES)
    assert "arrcoc.scorers.base" in GRAPH["arrcoc.scorers.participatory"] and "torch" in GRAPH["arrcoc.model"]


def test_the_model_core_imports_no_lightning_and_no_data():
    assert _violations(CORE, lambda d: not d.startswith("arrcoc") and d not in ("lightning", "pytorch_lightning")
                       or _in(d, CORE + SHARED)) == []


def test_the_shared_layer_imports_no_model_and_no_data():
    assert _violations(SHARED, lambda d: not d.startswith("arrcoc") or _in(d, SHARED)) == []


def test_the_data_path_imports_no_model_modules():
    assert _violations(("arrcoc.data",), lambda d: not d.startswith("arrcoc") or _in(d, ("arrcoc.data", *SHARED))) == []


def test_callbacks_import_no_data():
    assert _violations(("arrcoc.callbacks",), lambda d: not _in(d, ("arrcoc.data",))) == []


def test_only_the_entry_points_import_the_cli():
    users = sorted(m for m, deps in GRAPH.items() if deps & {"arrcoc.cli", "arrcoc.train.cli"} and m != "arrcoc.cli"
                   and m not in ENTRY_POINTS)
    assert users == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a path that ends where it started), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m] & set(graph)):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("graph, has_cycle", [({"a": {"b"}, "b": {"c"}, "c": set()}, False),
                                              ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)])
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (_cycle(graph) is not None) == has_cycle

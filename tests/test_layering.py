"""How fedaudit's modules depend on each other, read from their source (AST), imports inside functions included.

- No import cycle among fedaudit's modules, except plug-in loading: a registry's ``_load_builtin*`` function
  imports the modules that register themselves into it (attacks, models), and the threat-model registry loads its
  built-ins with ``importlib`` (not an import statement).
- The report renders what the layers below computed: no module under fedaudit/ imports fedaudit.report except the
  entry points (the CLI, a run, a suite, a frontier) and the report package itself.
- TensorFlow stays in models/, signals/, attacks/ and federation/ (and the auditor's shard and runtime helpers, which
  probe models): the scenario, the metrics, the run directory's schema, the risk across rounds and the report import
  none.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fedaudit"
REPORT_IMPORTERS = {"fedaudit.cli", "fedaudit.run", "fedaudit.suite", "fedaudit.frontier"}
NO_TENSORFLOW = ("fedaudit.config", "fedaudit.metrics", "fedaudit.schema", "fedaudit.threat_model",
                 "fedaudit.rundir", "fedaudit.runstate", "fedaudit.privacy", "fedaudit.auditor.aggregate",
                 "fedaudit.auditor.views", "fedaudit.auditor.core", "fedaudit.report")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The fedaudit module an imported name lives in (``fedaudit.a.b.c``: the longest prefix that is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def imports(module: str) -> list[tuple[str, str | None]]:
    """``[(imported fedaudit module or other top-level name, enclosing function or None)]`` of one module."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            fn = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names]
            for n in names:
                out.append((_resolve(n) or n.split(".")[0], function))
            visit(child, fn)

    visit(tree, None)
    return out


def graph(skip_plugin_loading: bool = True) -> dict[str, set[str]]:
    g = {}
    for m in MODULES:
        g[m] = {target for target, fn in imports(m) if target in MODULES and target != m
                and not (skip_plugin_loading and fn is not None and fn.startswith("_load_builtin"))}
    # importing a submodule imports its packages first
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def test_the_graph_reader_sees_imports_inside_functions_and_relative_ones():
    found = dict(imports("fedaudit.auditor.core"))
    assert "fedaudit.auditor.features" in found and found["fedaudit.auditor.features"] == "observe"
    assert "fedaudit.schema" in found and found["fedaudit.schema"] is None
    # a planted cycle is found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # plug-in loading is the only cycle it leaves out: with it, the model registry and keras-file form one
    assert ["fedaudit.models.keras_file", "fedaudit.models.registry"] in cycles(graph(skip_plugin_loading=False))


def test_no_import_cycle_among_fedaudit_modules():
    assert cycles(graph()) == []


def test_only_the_entry_points_import_the_report():
    offenders = sorted(m for m in MODULES if not m.startswith("fedaudit.report") and m not in REPORT_IMPORTERS
                       and any(t.startswith("fedaudit.report") for t, _ in imports(m)))
    assert offenders == []


@pytest.mark.parametrize("module", NO_TENSORFLOW)
def test_these_layers_import_no_tensorflow(module):
    mods = [m for m in MODULES if m == module or m.startswith(module + ".")]
    users = sorted(m for m in mods if any(t in ("tensorflow", "keras") for t, _ in imports(m)))
    assert users == []

"""The layers of sagaflow, enforced: who may import whom, and no import cycles.

Every module under sagaflow/ is parsed, and every import is collected: at the top, inside
functions, under TYPE_CHECKING, and `importlib.import_module("literal")`. Relative imports are
resolved, and `from sagaflow.x import y` counts as importing sagaflow.x.y when y is a module.
Each failure names the file, the line, the import and the rule it breaks.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sagaflow"
UPPER = ("engine", "messaging", "service", "client", "ops", "devstack")
# Run by the layers only they may load.
SERVICE_FORBIDDEN = ("sqlalchemy", "flask", "waitress", "alembic", "rich")
TOP_FORBIDDEN = ("celery", "sqlalchemy")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module imported, relative imports resolved
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.source} imports {self.target}"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _from_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if path.name != "__init__.py":
        package.pop()
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, path, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(module, submodule if submodule in modules else base, path, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(module, node.args[0].value, path, node.lineno)


def all_imports(package: Path = PACKAGE) -> list[Import]:
    modules = module_files(package)
    return [found for name, path in modules.items() for found in imports_of(name, path, modules)]


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def sub(*names: str) -> tuple[str, ...]:
    return tuple(f"sagaflow.{name}" for name in names)


def is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


# Each rule: the modules it governs, and what it says of one of their imports (None: allowed).
Rule = Callable[[Import], "str | None"]


def core_rule(imp: Import) -> str | None:
    if not within(imp.source, "sagaflow.core"):
        return None
    if is_stdlib(imp.target) or within(imp.target, "sagaflow.errors", "sagaflow.core"):
        return None
    return "sagaflow.core imports only the standard library, sagaflow.errors and sagaflow.core"


def _no_messaging_libraries(imp: Import, layer: str) -> str | None:
    if within(imp.target, "celery", "kombu"):
        return f"sagaflow.{layer} imports no celery or kombu"
    return None


def store_rule(imp: Import) -> str | None:
    if not within(imp.source, "sagaflow.store"):
        return None
    if within(imp.target, *sub(*UPPER)):
        return "sagaflow.store imports nothing from " + ", ".join(UPPER)
    return _no_messaging_libraries(imp, "store")


def engine_rule(imp: Import) -> str | None:
    if not within(imp.source, "sagaflow.engine"):
        return None
    if within(imp.target, *sub(*UPPER[1:])):
        return "sagaflow.engine imports nothing from " + ", ".join(UPPER[1:])
    return _no_messaging_libraries(imp, "engine")


def service_rule(imp: Import) -> str | None:
    if not within(imp.source, "sagaflow.service"):
        return None
    if within(imp.target, *sub("store", "engine", "client", "ops", "devstack")):
        return "sagaflow.service imports nothing from store, engine, client, ops, devstack"
    if within(imp.target, "sqlalchemy") and imp.source != "sagaflow.service.effects":
        return "in sagaflow.service only sagaflow.service.effects imports sqlalchemy"
    return None


def client_rule(imp: Import) -> str | None:
    if not within(imp.source, "sagaflow.client"):
        return None
    if within(imp.target, *sub("engine", "ops", "devstack")):
        return "sagaflow.client imports nothing from engine, ops, devstack"
    return None


# The command line lives in ops: `python -m sagaflow` runs it. devstack's modules use each other.
OPS_IMPORTERS = {"sagaflow.__main__": ("sagaflow.ops.cli",)}


def ops_rule(imp: Import) -> str | None:
    if within(imp.source, "sagaflow.ops") or not within(imp.target, *sub("ops", "devstack")):
        return None
    if within(imp.source, "sagaflow.devstack") and within(imp.target, "sagaflow.devstack"):
        return None
    if imp.target in OPS_IMPORTERS.get(imp.source, ()):
        return None
    return "nothing outside sagaflow.ops imports sagaflow.ops or sagaflow.devstack"


RULES: dict[str, Rule] = {
    "core": core_rule,
    "store": store_rule,
    "engine": engine_rule,
    "service": service_rule,
    "client": client_rule,
    "ops": ops_rule,
}


def violations(rule: Rule, imports: list[Import]) -> list[str]:
    found = []
    for imp in imports:
        broken = rule(imp)
        if broken is not None:
            found.append(f"{imp.where()}: {broken}")
    return sorted(set(found))


@pytest.mark.parametrize("layer", RULES)
def test_layer_imports(layer: str) -> None:
    found = violations(RULES[layer], all_imports())
    if found:
        pytest.fail(f"{len(found)} import(s) break the {layer} rule:\n" + "\n".join(found))


# Import cycles -----------------------------------------------------------------------------


def module_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """sagaflow's modules and, for each, the sagaflow modules it imports (one import each).

    Only the module an import names is an edge: importing a.b.c also runs a/__init__ and
    a/b/__init__, but that implicit edge back to a package is not a cycle of the code's making,
    so a package whose __init__ re-exports its submodules is no cycle unless one of them imports
    the package by name.
    """
    modules = module_files()
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for imp in imports:
        if imp.target in modules and imp.target != imp.source:
            graph[imp.source].setdefault(imp.target, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def describe_cycle(component: list[str], graph: dict[str, dict[str, Import]]) -> str:
    members = set(component)
    edges = [
        f"  {imp.where()}"
        for source in component
        for target, imp in sorted(graph[source].items())
        if target in members
    ]
    return "import cycle between " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_no_import_cycles() -> None:
    graph = module_graph(all_imports())
    cycles = [describe_cycle(c, graph) for c in strongly_connected(graph)]
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles))


# What a process loads ----------------------------------------------------------------------


def loaded_after(statements: str, watched: tuple[str, ...]) -> list[str]:
    """The watched top-level packages in sys.modules after `statements`, in a new interpreter."""
    probe = (
        f"import sys\n{statements}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(watched)!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{statements!r} failed: {done.stderr}"
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_service_worker_loads_no_store_dashboard_or_cli_libraries() -> None:
    statements = "import sagaflow.service; import sagaflow.service.tasks"
    loaded = loaded_after(statements, SERVICE_FORBIDDEN)
    assert loaded == [], f"importing sagaflow.service loads {loaded}"


def test_importing_sagaflow_alone_loads_neither_celery_nor_sqlalchemy() -> None:
    loaded = loaded_after("import sagaflow", TOP_FORBIDDEN)
    assert loaded == [], f"import sagaflow loads {loaded}"


# The checker checked ------------------------------------------------------------------------


def _write(folder: Path, files: dict[str, str]) -> Path:
    package = folder / "sagaflow"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_collector_sees_hidden_relative_and_submodule_imports(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import kombu\n"
                "def f():\n    from ..store import sql\n"
                "def g():\n    import importlib\n    importlib.import_module('celery')\n"
            ),
            "store/__init__.py": "from . import sql\nfrom .sql import Store\n",
            "store/sql.py": "from sagaflow.core import a\n",
        },
    )
    found = {(i.source, i.target, i.line) for i in all_imports(package)}
    assert ("sagaflow.core.a", "kombu", 3) in found
    assert ("sagaflow.core.a", "sagaflow.store.sql", 5) in found
    assert ("sagaflow.core.a", "celery", 8) in found
    assert ("sagaflow.store", "sagaflow.store.sql", 1) in found
    assert ("sagaflow.store.sql", "sagaflow.core.a", 1) in found
    core = [i for i in all_imports(package) if core_rule(i)]
    assert {i.target for i in core} == {"kombu", "sagaflow.store.sql", "celery"}


def test_the_cycle_finder_reports_hidden_cycles_not_re_exports() -> None:
    def imp(source: str, target: str) -> Import:
        return Import(source, target, ROOT / "x.py", 1)

    graph = {
        "p": {"p.a": imp("p", "p.a"), "p.b": imp("p", "p.b")},
        "p.a": {"p.b": imp("p.a", "p.b")},
        "p.b": {},
        "q": {"r": imp("q", "r")},
        "r": {"s": imp("r", "s")},
        "s": {"q": imp("s", "q")},
    }
    assert strongly_connected(graph) == [["q", "r", "s"]]
    graph["p.b"]["p"] = imp("p.b", "p")  # a submodule importing its package by name
    assert strongly_connected(graph) == [["p", "p.a", "p.b"], ["q", "r", "s"]]

"""The saga store's place among the layers: who may import it, what it may import, and where the
differences between SQLite and PostgreSQL live. Read from the source and from fresh interpreters."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sagaflow"
# The only modules that may tell one database from another.
DIALECT_MODULES = {"sagaflow.store.sqlite", "sagaflow.store.postgres", "sagaflow.store.factory"}
DIALECT_TEST = re.compile(
    r"\.dialect\.name|get_backend_name\(|startswith\(\s*[\"'](sqlite|postgres)"
    r"|[=!]=\s*[\"'](sqlite|postgresql)[\"']"
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """sagaflow modules `path` imports anywhere in it: at the top, in functions, for typing."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from `start` back to itself, if there is one."""
    trail: list[str] = []
    seen: set[str] = set()

    def walk(name: str) -> bool:
        for imported in sorted(graph[name]):
            if imported == start:
                trail.append(imported)
                return True
            if imported not in seen:
                seen.add(imported)
                trail.append(imported)
                if walk(imported):
                    return True
                trail.pop()
        return False

    return [start, *trail] if walk(start) else None


def loaded_after(*imports: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `imports`."""
    code = "import sys\n" + "".join(f"import {name}\n" for name in imports)
    code += "print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_no_store_module_is_part_of_an_import_cycle() -> None:
    graph = import_graph()
    leaves = [n for n in graph if n.startswith("sagaflow.store") or n == "sagaflow.sqlite_engine"]
    assert len(leaves) > 10
    cycles = [c for c in (cycle_through(graph, name) for name in sorted(leaves)) if c]
    assert cycles == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle_through(graph, "a") == ["a", "b", "c", "a"]
    assert cycle_through(graph, "d") is None


def test_the_engine_depends_on_the_store_protocol_only() -> None:
    graph = import_graph()
    engine = [n for n in graph if n.startswith("sagaflow.engine")]
    assert engine
    used = {m for name in engine for m in graph[name] if m.startswith("sagaflow.store")}
    assert used == {"sagaflow.store.protocol"}


def test_migrate_imports_no_store_class() -> None:
    stores = {"sagaflow.store.sql", "sagaflow.store.sqlite", "sagaflow.store.postgres"}
    assert import_graph()["sagaflow.store.migrate"] & {*stores, "sagaflow.store.factory"} == set()


def test_only_the_dialect_modules_tell_databases_apart() -> None:
    offenders = [
        f"{name}:{number}: {line.strip()}"
        for name, path in modules().items()
        if name not in DIALECT_MODULES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DIALECT_TEST.search(line)
    ]
    assert offenders == []
    assert DIALECT_TEST.search('if url.startswith("sqlite"):')  # the check can see one


def test_the_sqlite_engine_module_is_a_leaf() -> None:
    assert import_graph()["sagaflow.sqlite_engine"] == set()


def test_service_workers_never_load_the_saga_store() -> None:
    loaded = loaded_after(
        "sagaflow.service.tasks",
        "sagaflow.service.effects",
        "workers.db",
        "workers.inventory",
        "workers.payments",
        "workers.shipping",
    )
    assert "sagaflow.sqlite_engine" in loaded
    assert sorted(m for m in loaded if m.startswith("sagaflow.store")) == []


def test_the_store_loads_no_celery_or_kombu() -> None:
    loaded = loaded_after(
        "sagaflow.store.factory", "sagaflow.store.stats", "sagaflow.store.migrate"
    )
    assert "sagaflow.store.postgres" in loaded and "sagaflow.store.sqlite" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("celery", "kombu")) == []


def test_the_quarantine_store_loads_no_kombu() -> None:
    loaded = loaded_after("sagaflow.store.quarantine")
    assert sorted(m for m in loaded if m.split(".")[0] in ("celery", "kombu")) == []

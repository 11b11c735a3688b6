"""The saga store's place among the layers: who may import it, what it may import, and where the
differences between SQLite and PostgreSQL live. Read from the source and from fresh interpreters."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.unit.test_layers import all_imports, module_graph

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


def import_graph() -> dict[str, set[str]]:
    """Each sagaflow module and the sagaflow modules it imports, as the layer test reads them."""
    return {name: set(targets) for name, targets in module_graph(all_imports()).items()}


def loaded_after(*imports: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `imports`."""
    code = "import sys\n" + "".join(f"import {name}\n" for name in imports)
    code += "print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


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

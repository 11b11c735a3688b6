"""sagaflow.core is pure: it imports the standard library, sagaflow.errors and itself only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "sagaflow" / "core"
ALLOWED = ("sagaflow.core", "sagaflow.errors")


def foreign_imports(source: str) -> list[str]:
    """Modules `source` imports that are neither the standard library nor ALLOWED."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            allowed = name == "sagaflow" or any(
                name == a or name.startswith(f"{a}.") for a in ALLOWED
            )
            if top != "__future__" and top not in sys.stdlib_module_names and not allowed:
                found.append(name)
    return found


def test_the_check_finds_a_foreign_import() -> None:
    source = "import json\nfrom kombu.utils import json as k\nimport sagaflow.store.sql\n"
    assert foreign_imports(source) == ["kombu.utils", "sagaflow.store.sql"]
    assert foreign_imports("from sagaflow.core.records import ErrorInfo\n") == []


def test_core_imports_only_the_standard_library_errors_and_itself() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 10
    found = {p.name: foreign_imports(p.read_text()) for p in modules}
    assert {name: imports for name, imports in found.items() if imports} == {}

"""The README's layout table names every module of the package, in the row of its folder."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_rows() -> list[tuple[str, list[str]]]:
    """(folder, file patterns) of every row of the README's Layout table about sagaflow/."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `sagaflow/"):
            continue
        names = re.findall(r"`([^`]+)`", line)
        first = names[0]
        folder = first if first.endswith("/") else first.rsplit("/", 1)[0] + "/"
        patterns = [Path(first).name] if not first.endswith("/") else []
        patterns += [n for n in names[1:] if n.endswith(".py") and "/" not in n]
        rows.append((folder, patterns))
    return rows


def package_modules() -> list[Path]:
    package = ROOT / "sagaflow"
    return sorted(
        path.relative_to(ROOT)
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "migrations" not in path.parts
    )


def test_every_module_is_in_the_layout_table() -> None:
    rows = layout_rows()
    assert rows, "no Layout table rows about sagaflow/ in README.md"
    missing = []
    for module in package_modules():
        folder = module.parent.as_posix() + "/"
        if not any(
            folder == row_folder and any(fnmatch.fnmatch(module.name, p) for p in patterns)
            for row_folder, patterns in rows
        ):
            missing.append(module.as_posix())
    assert not missing, f"modules the README's Layout table does not name: {missing}"


def test_the_layout_table_names_no_module_that_is_gone() -> None:
    modules = {m.as_posix() for m in package_modules()}
    gone = [
        folder + pattern
        for folder, patterns in layout_rows()
        for pattern in patterns
        if not any(fnmatch.fnmatch(m, folder + pattern) for m in modules)
    ]
    assert not gone, f"the README's Layout table names modules that do not exist: {gone}"

"""What `pip install` gets: every subpackage, the example services under sagaflow.example, one
version, the license."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import tomllib

import sagaflow

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_names_every_subpackage_and_the_example() -> None:
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "sagaflow").rglob("__init__.py")
    }
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    assert listed == found | {"sagaflow.example"}, (
        f"pyproject.toml's packages differ from the tree: missing {sorted(found - listed)}, "
        f"extra {sorted(listed - found - {'sagaflow.example'})}"
    )
    assert PROJECT["tool"]["setuptools"]["package-dir"] == {"sagaflow.example": "workers"}


def test_the_example_services_import_each_other_relatively() -> None:
    """Installed, workers/ is sagaflow.example: an absolute `workers` import would break."""
    for module in (ROOT / "workers").glob("*.py"):
        for line in module.read_text().splitlines():
            assert not line.startswith(("from workers", "import workers")), f"{module}: {line}"


def test_the_version_has_one_source() -> None:
    assert "version" in PROJECT["project"]["dynamic"]
    assert PROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sagaflow.__version__"}
    assert importlib.metadata.version("celery-sagaflow") == sagaflow.__version__


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    assert PROJECT["project"]["license"] == "MIT"
    assert PROJECT["project"]["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog

"""The layout of DESIGN §3: one `mallard` namespace package sliced over the stage folders, and imports
that only point down the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICES = {
    "collector": {"collector"},
    "storage": {"storage"},
    "query": {"query"},
    "dashboards": {"dashboards", "app"},
    "instrumentation": {"instrumentation"},
}
# What each subpackage may import of ours besides itself. `mallard.app` is the composition root:
# the `mallard` command, which wires the stages into processes; nothing imports it.
ALLOWED = {
    "instrumentation": set(),
    "storage": set(),
    "collector": {"storage"},
    "query": {"storage"},
    "dashboards": {"query", "storage"},
    "app": {"collector", "query", "storage", "dashboards", "instrumentation"},
}


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if ".venv" not in p.parts)


def test_no_mallard_init_and_no_loose_modules() -> None:
    for folder, packages in SLICES.items():
        namespace = ROOT / folder / "mallard"
        assert namespace.is_dir(), f"{folder}/mallard is missing"
        assert not (namespace / "__init__.py").exists(), f"{folder}/mallard/__init__.py breaks the namespace"
        entries = {p.name for p in namespace.iterdir() if p.name != "__pycache__"}
        assert entries == packages, f"{folder}/mallard holds {sorted(entries)}, expected {sorted(packages)}"
        for package in packages:
            assert (namespace / package / "__init__.py").is_file()


def test_deploy_holds_no_python() -> None:
    assert not list((ROOT / "deploy").rglob("*.py"))


def _imported_subpackages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mallard" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package: str) -> None:
    folder = next(f for f, packages in SLICES.items() if package in packages)
    files = _python_files(ROOT / folder / "mallard" / package)
    assert files
    for path in files:
        bad = _imported_subpackages(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(ROOT)} imports mallard.{', mallard.'.join(sorted(bad))}"


def test_nothing_imports_the_composition_root() -> None:
    for folder in SLICES:
        for path in _python_files(ROOT / folder):
            if "app" in path.relative_to(ROOT / folder).parts:
                continue
            assert "app" not in _imported_subpackages(path), path


def test_wheel_config_names_every_slice() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for folder in SLICES:
        assert f'"{folder}/mallard"' in text
        assert f'"{folder}"' in text  # dev-mode-dirs, so editable installs see every slice

"""The dependency direction of DESIGN.md: libraries never import the CLI, typer or rich."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {
    "vesper_core": {"vesper_core"},
    "vesper_optim": {"vesper_core", "vesper_optim"},
    "vesper_data": {"vesper_core", "vesper_data"},
    "vesper_metacog": {"vesper_core", "vesper_metacog"},
}
FORBIDDEN_THIRD_PARTY = {"typer", "rich", "click"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_library_imports_follow_the_design(package):
    vesper_packages = {"vesper_core", "vesper_optim", "vesper_data", "vesper_metacog", "vesper_cli"}
    for path in (REPO / package).rglob("*.py"):
        imported = _imports(path)
        bad = (imported & vesper_packages) - ALLOWED[package]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
        assert not imported & FORBIDDEN_THIRD_PARTY, f"{path.relative_to(REPO)} imports {imported & FORBIDDEN_THIRD_PARTY}"

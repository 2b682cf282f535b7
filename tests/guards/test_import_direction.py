"""The dependency direction of DESIGN.md: commands on top, a typer-free engine, the libraries below.

* libraries never import the CLI, typer, rich or click; vesper_optim and vesper_data use only vesper_core's
  base modules (errors, registries, devices, atomic writes, the loss constants);
* the engine (``vesper_cli/engine``) imports no command, typer, rich or click, and never prints or exits:
  it reports through observers and raises VesperError.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VESPER_PACKAGES = {"vesper_core", "vesper_optim", "vesper_data", "vesper_metacog", "vesper_cli"}
ALLOWED = {
    "vesper_core": {"vesper_core"},
    "vesper_optim": {"vesper_core", "vesper_optim"},
    "vesper_data": {"vesper_core", "vesper_data"},
    "vesper_metacog": {"vesper_core", "vesper_metacog"},
}
CORE_BASE = {"vesper_core", "vesper_core.errors", "vesper_core.registry", "vesper_core.device", "vesper_core.atomic",
             "vesper_core.kernels.cross_entropy"}
BASE_ONLY = ("vesper_optim", "vesper_data")
FORBIDDEN_THIRD_PARTY = {"typer", "rich", "click"}
ENGINE = REPO / "vesper_cli" / "engine"


def _modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_library_imports_follow_the_design(package):
    for path in (REPO / package).rglob("*.py"):
        modules = _modules(path)
        imported = _tops(modules)
        bad = (imported & VESPER_PACKAGES) - ALLOWED[package]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
        assert not imported & FORBIDDEN_THIRD_PARTY, f"{path.relative_to(REPO)} imports {imported & FORBIDDEN_THIRD_PARTY}"
        if package in BASE_ONLY:
            core = {m for m in modules if m.split(".")[0] == "vesper_core"}
            assert core <= CORE_BASE, f"{path.relative_to(REPO)} imports {core - CORE_BASE} (not vesper_core's base)"


def test_engine_is_typer_free_and_silent():
    files = sorted(ENGINE.rglob("*.py"))
    assert files
    for path in files:
        modules = _modules(path)
        where = path.relative_to(REPO)
        assert not _tops(modules) & FORBIDDEN_THIRD_PARTY, f"{where} imports {_tops(modules) & FORBIDDEN_THIRD_PARTY}"
        face = {m for m in modules if m.startswith("vesper_cli.") and not m.startswith("vesper_cli.engine")}
        assert not face, f"{where} imports the command layer: {face}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"print", "exit"}, f"{where}:{node.lineno} calls {node.func.id}()"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in {("sys", "exit"), ("os", "_exit")} or path.name == "control.py", \
                    f"{where}:{node.lineno} uses {node.value.id}.{node.attr}"

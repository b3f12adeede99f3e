"""Imports go one way: the CLI, consumers, producers and jobs depend on the core, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTER = ("consumers", "producers", "jobs", "planshift.cli")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_nothing_of_the_outer_packages():
    offenders = []
    for path in (ROOT / "planshift").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "planshift").parts or path.name == "__main__.py":
            continue
        for name in imported_modules(path):
            if any(name == o or name.startswith(o + ".") for o in OUTER):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_pure_domain_never_imports_kafka():
    domain = ROOT / "planshift" / "domain"
    for path in domain.rglob("*.py") if domain.exists() else []:
        assert not any(n.split(".")[0] == "kafka" for n in imported_modules(path)), path


def test_design_card_layout_exists():
    for name in ("pyproject.toml", "consumers", "producers", "jobs", "schemas", "tests",
                 "docker-compose.yml", "README.md"):
        assert (ROOT / name).exists(), name

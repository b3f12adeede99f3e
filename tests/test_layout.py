"""Imports go one way, with no exemption: the CLI, consumers, producers and jobs depend on the
core, never the reverse; inside the core, each concern depends only on those beneath it;
kafka-python's private parts are touched by one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTER = ("cli", "consumers", "producers", "jobs", "bench", "tests")
# What each part of the core may import of the core, besides the top-level modules
# (contract, settings, logs, errors, events, schema, catalogue).
MAY_IMPORT = {
    "domain": {"domain"},
    "kafka": {"kafka"},
    "storage": {"storage"},
    "runtime": {"runtime", "kafka"},
    "ops": {"ops", "runtime", "kafka", "storage", "domain"},
    "web": {"web", "ops", "domain", "kafka", "storage"},
    "(top)": set(),
}
AREAS = {"domain", "kafka", "storage", "runtime", "ops", "web"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def core_modules():
    for path in (ROOT / "planshift").rglob("*.py"):
        parts = path.relative_to(ROOT / "planshift").parts
        yield path, parts[0] if len(parts) > 1 else "(top)"


def test_core_imports_nothing_of_the_outer_packages():
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path, _ in core_modules() for name in imported_modules(path)
                 if any(name == o or name.startswith(o + ".") for o in OUTER)]
    assert offenders == []


def test_each_concern_of_the_core_imports_only_what_lies_beneath_it():
    offenders = []
    for path, area in core_modules():
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] != "planshift" or len(parts) < 2 or parts[1] not in AREAS:
                continue
            if parts[1] not in MAY_IMPORT[area]:
                offenders.append(f"{path.relative_to(ROOT)} ({area}) imports {name}")
    assert offenders == []


def test_pure_domain_never_imports_kafka():
    for path in (ROOT / "planshift" / "domain").rglob("*.py"):
        assert not any(n.split(".")[0] == "kafka" for n in imported_modules(path)), path


def test_kafka_pythons_private_parts_are_used_in_one_module_only():
    """`obj._private` on a kafka-python object, or an import of one of its private names,
    anywhere but planshift/kafka/fastpath.py (and the test of its record encoder)."""
    private = re.compile(r"\b(producer|_producer|consumer|accumulator|_accumulator|records|builder|batch|"
                         r"transactions|_transaction_manager|_metadata|_sender|ConsumerCoordinator)\._[a-z]")
    allowed = {ROOT / "planshift" / "kafka" / "fastpath.py", ROOT / "tests" / "test_record_encoding.py"}
    offenders = []
    for folder in ("planshift", "cli", "consumers", "producers", "jobs", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in allowed or path == Path(__file__).resolve():
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in private.finditer(text)]
            offenders += [f"{path.relative_to(ROOT)} imports {n}" for n in imported_modules(path)
                          if n.startswith("kafka.") and any(p.startswith("_") for p in n.split("."))]
    assert offenders == []


def test_one_consume_loop():
    """Every consumer group runs on the runtime: one `poll` of a group's consumer in the code base."""
    polls = [path.relative_to(ROOT) for folder in ("planshift", "cli", "consumers", "producers", "jobs")
             for path in (ROOT / folder).rglob("*.py") if re.search(r"consumer\.poll\(", path.read_text())]
    # The runtime's loop, and the plain reader (assigned partitions, no group) that
    # tables, restores, `tail` and `status` read through.
    # The status view (`planshift serve`, the demo) follows its topics the same way, without a group.
    assert sorted(map(str, polls)) == ["planshift/kafka/reader.py", "planshift/ops/view.py",
                                       "planshift/runtime/processor.py"]


def test_design_card_layout_exists():
    for name in ("pyproject.toml", "consumers", "producers", "jobs", "schemas", "tests",
                 "docker-compose.yml", "README.md"):
        assert (ROOT / name).exists(), name

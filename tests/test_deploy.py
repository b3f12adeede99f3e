"""The deployment as users get it: docker-compose.yml (which cannot run here: no Docker
engine), the image, and Prometheus' configuration and alerts (with the real promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = ROOT / "deploy" / "prometheus"
SERVICES = COMPOSE["services"]
PLANSHIFT = {name: s for name, s in SERVICES.items() if s.get("image") == "planshift:latest"}
LONG_RUNNING = {name for name, s in PLANSHIFT.items() if s.get("command", [None])[0] == "run"}


def test_every_planshift_command_of_the_compose_file_is_one_the_cli_takes():
    assert LONG_RUNNING == {"intake", "migrate", "settle", "archive"}
    for name, service in PLANSHIFT.items():
        command = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", part) for part in service["command"]]
        args = build_parser().parse_args(command)  # exits 2 on a command the CLI does not take
        assert callable(args.handler), name


def test_scaled_replicas_get_names_of_their_own_and_serve_health_on_the_scraped_port():
    for name in LONG_RUNNING:
        service = PLANSHIFT[name]
        assert "--instance" not in service["command"], f"{name}: replicas would share one transactional id"
        assert service["environment"]["PLANSHIFT_METRICS_PORT"] == 9400
        assert service["healthcheck"]["test"] == ["CMD", "planshift", "health", "--port", "9400"]
        assert service["depends_on"]["directory-seed"]["condition"] == "service_completed_successfully"
    for name in set(PLANSHIFT) - LONG_RUNNING - {"status-page"}:  # one-shot commands serve nothing to check
        assert PLANSHIFT[name]["healthcheck"] == {"disable": True}, name
    page = PLANSHIFT["status-page"]  # the page answers /healthz on its own port
    port = page["command"][page["command"].index("--port") + 1]
    assert page["healthcheck"]["test"] == ["CMD", "planshift", "health", "--port", port]
    assert page["ports"] == [f"127.0.0.1:{port}:{port}"], "published on this host only: it has no sign-in"
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    planshift = next(job for job in scrape if job["job_name"] == "planshift")["dns_sd_configs"][0]
    assert set(planshift["names"]) == LONG_RUNNING and planshift["port"] == 9400
    assert {"prometheus", "pushgateway"} <= set(SERVICES)


def test_the_seed_step_imports_once_into_an_empty_directory_only(tmp_path, monkeypatch, capsys):
    from cli import main
    from planshift.storage.directory import Licence, SqliteDirectory, export_parquet
    from planshift.settings import Settings

    seed = PLANSHIFT["directory-seed"]["command"]
    monkeypatch.setenv("PLANSHIFT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("PLANSHIFT_DIRECTORY_URL", raising=False)
    assert main([*seed[:2], str(tmp_path / "absent.parquet"), *seed[3:]]) == 0  # no file: nothing to do
    assert "nothing imported" in capsys.readouterr().out
    source = SqliteDirectory(tmp_path / "source.sqlite3")
    source.put([Licence("contoso", f"u{i}", "contoso-sub-std", "M365_BUSINESS_STANDARD") for i in range(3)])
    export_parquet(source, tmp_path / "licences.parquet")
    assert main([*seed[:2], str(tmp_path / "licences.parquet"), *seed[3:]]) == 0
    directory = SqliteDirectory.for_settings(Settings.from_env())
    assert directory.count() == 3
    moved = SqliteDirectory.for_settings(Settings.from_env())
    moved.put([Licence("contoso", "u0", "contoso-sub-premium", "M365_BUSINESS_PREMIUM")])
    assert main([*seed[:2], str(tmp_path / "licences.parquet"), *seed[3:]]) == 0  # compose up again
    assert "nothing imported (--if-empty)" in capsys.readouterr().out
    assert moved.count() == 4


def test_the_image_carries_every_package_the_console_script_needs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = re.search(r'include = \[(.*?)\]', (ROOT / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} ./{package}" in dockerfile, f"the image lacks {package}/"


def promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (./dev.sh installs Debian's prometheus package)")
    done = subprocess.run([binary, *args], cwd=PROMETHEUS, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_prometheus_configuration_and_alert_rules_pass_promtool_and_their_unit_tests():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "8 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_every_alert_has_its_runbook_section_and_uses_documented_metrics():
    runbook = (ROOT / "docs" / "RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    documented = set(re.findall(r"`(planshift_[a-z_]+)`", runbook))
    for rule in rules:
        assert rule["annotations"]["runbook"].split("#")[1] in anchors, rule["alert"]
        for metric in re.findall(r"\b(planshift_[a-z_]+)", rule["expr"]):
            assert metric in documented, f"{rule['alert']} uses {metric}, which the runbook's table lacks"


def test_each_service_logs_in_as_its_own_role_on_a_secured_cluster():
    from planshift.ops.security import ROLES

    for service, role in (("intake", "intake"), ("migrate", "migrate"), ("settle", "settle"),
                          ("archive", "archive"), ("topics", "operator")):
        username = PLANSHIFT[service]["environment"]["PLANSHIFT_SASL_USERNAME"]
        assert username.endswith(f":-{ROLES[role].user}}}"), (service, username)

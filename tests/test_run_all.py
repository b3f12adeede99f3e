"""`planshift run all` supervises the consumers; `planshift status` shows an upgrade's state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from cli import main
from planshift.contract import Topic
from planshift.events import with_envelope
from producers.samples import upgrade_request
from tests.conftest import produce, seed_users, values, wait_for


def children_started(log_path):
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("event") == "child started":
            lines.append(entry)
    return lines


def test_run_all_settles_restarts_a_dead_child_and_stops_cleanly(settings, tmp_path, monkeypatch, capsys):
    seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 30)
    env = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PLANSHIFT_TOPIC_PREFIX": settings.topic_prefix, "PLANSHIFT_DATA_DIR": str(settings.data_dir),
           "PLANSHIFT_BATCH_SIZE": "10"}
    log_path = tmp_path / "all.log"
    with open(log_path, "ab") as log:
        supervisor = subprocess.Popen([sys.executable, "-m", "cli", "run", "all", "--migrate-instances", "2"],
                                      env=env, stdout=log, stderr=log)
    try:
        started = wait_for(lambda: len(children_started(log_path)) >= 4 and children_started(log_path), 60,
                           message="four children")
        assert sorted(c["child"] for c in started) == ["intake", "migrate-0", "migrate-1", "settle"]
        victim = next(c for c in started if c["child"] == "migrate-1")
        os.kill(victim["pid"], signal.SIGKILL)
        restarted = wait_for(lambda: [c for c in children_started(log_path)
                                      if c["child"] == "migrate-1" and c["pid"] != victim["pid"]], 30,
                             message="migrate-1 to be restarted")
        assert restarted

        produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", with_envelope(
            upgrade_request("contoso", "ord-all", licenses=30), "upgrade.requested"))])
        wait_for(lambda: any(v["status"] == "completed" for v in values(settings, Topic.UPGRADE_STATUS)), 120,
                 interval=0.5, message="the upgrade to complete")

        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(90) == 0
        pids = [c["pid"] for c in children_started(log_path)]
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()

    monkeypatch.setenv("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix)
    assert main(["status", "ord-all"]) == 0
    out = capsys.readouterr().out
    assert "ord-all of contoso: COMPLETED" in out
    assert "accepted → migrating → completed" in out
    assert "[##############################] 30/30 users, 3/3 batches" in out
    assert main(["status", "ord-unknown"]) == 1
    assert "no status for upgrade ord-unknown" in capsys.readouterr().err

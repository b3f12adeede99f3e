"""The command line: --help everywhere, one-line errors with exit code 2, the publisher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli import build_parser, main
from planshift.contract import Topic
from planshift.kafka.reader import read_topic


def subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from subcommand_paths(sub, (*prefix, name))


PATHS = [()] + list(subcommand_paths(build_parser()))


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "planshift" for p in PATHS])
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    assert "usage: planshift" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["frobnicate"],
    ["broker", "restart"],
    ["broker", "start", "--timeout", "soon"],
    ["tail", "upgrade.status", "--limit", "x"],
    ["publish", "upgrade-requests"],
])
def test_bad_argument_is_one_line_and_exit_2(argv):
    proc = subprocess.run([sys.executable, "-m", "cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr


def test_bad_environment_is_one_line_and_exit_2():
    env = {**os.environ, "PLANSHIFT_PREPAID_POLICY": "refund"}
    proc = subprocess.run([sys.executable, "-m", "cli", "topics", "list"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "PLANSHIFT_PREPAID_POLICY" in proc.stderr


def test_unreachable_broker_is_one_line_and_exit_1(tmp_path):
    from planshift.ops.broker import free_port

    env = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    proc = subprocess.run([sys.executable, "-m", "cli", "topics", "create"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"planshift: error: no Kafka broker answers at {env['PLANSHIFT_BOOTSTRAP_SERVERS']} "
        "(start one with 'planshift broker start')"]


def test_publish_upgrade_requests_reports_each_bad_line(settings, tmp_path, monkeypatch, capsys):
    from producers.samples import upgrade_request

    good = [upgrade_request(f"tenant-{i}", f"ord-{i}") for i in range(3)]
    bad = dict(good[0], licenses="many")
    del bad["currency"]
    lines = [json.dumps(good[0]), "", json.dumps(bad), "{broken", json.dumps(good[1]), "[1]", json.dumps(good[2])]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix)

    code = main(["publish", "upgrade-requests", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{path}:3: $.currency: required field is missing; $.licenses: 'many' is not of type 'integer'" in err
    assert f"{path}:4: not JSON" in err
    assert f"{path}:6: not a JSON object" in err
    assert "sent 3 upgrade requests, 3 lines refused" in out

    records = read_topic(settings, settings.topic(Topic.UPGRADE_REQUESTED))
    assert sorted(r.value["upgrade_id"] for r in records) == ["ord-0", "ord-1", "ord-2"]
    for r in records:
        assert r.key == r.value["tenant_id"]  # keyed by tenant_id
        assert r.headers["event_type"] == b"upgrade.requested" and r.headers["schema_version"] == b"1"
        assert r.value["event_id"] and r.value["schema_version"] == 1

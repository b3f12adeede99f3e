"""Operators after an incident: replays and re-driven dead letters never produce a second
billing switch, credit or migration (CONTRACT.md §7)."""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import date

import pytest

from cli import main
from consumers import intake, migrate, settle
from planshift.contract import Topic
from planshift.events import with_envelope
from planshift.ops.deadletters import dead_letters, redrive
from planshift.ops.offsets import execute, plan_reset
from planshift.storage.directory import SqliteDirectory
from producers.samples import upgrade_request
from tests.conftest import produce, running, seed_users, values, wait_for


def request(tenant, upgrade, users):
    return with_envelope(upgrade_request(tenant, upgrade, today=date.today(), licenses=users), "upgrade.requested")


@contextlib.contextmanager
def pipeline(settings):
    procs = [intake.processor(settings, commit_interval_ms=50), migrate.processor(settings, commit_interval_ms=50),
             settle.processor(settings, commit_interval_ms=50)]
    with contextlib.ExitStack() as stack:
        for p in procs:
            stack.enter_context(running(p, timeout=60))
        yield procs


def counts(settings):
    return (Counter(v["status"] for v in values(settings, Topic.UPGRADE_STATUS)),
            len(values(settings, Topic.LICENSE_BATCHES)), len(values(settings, Topic.LICENSE_BATCH_COMPLETED)),
            len(values(settings, Topic.BILLING_SWITCH)), len(values(settings, Topic.CREDIT_ISSUED)))


def test_replaying_every_group_from_the_start_produces_nothing_twice(settings):
    settings = settings.with_(batch_size=5)
    for n in range(3):
        seed_users(settings, f"t{n}", f"t{n}-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 12)
    produce(settings, Topic.UPGRADE_REQUESTED, [(f"t{n}", request(f"t{n}", f"ord-{n}", 12)) for n in range(3)])
    with pipeline(settings):
        wait_for(lambda: Counter(v["status"] for v in values(settings, Topic.UPGRADE_STATUS))["completed"] == 3,
                 120, interval=0.5, message="three completed upgrades")
    before = counts(settings)
    assert before[3] == before[4] == 3

    for group in ("planshift-intake", "planshift-migrate", "planshift-settle"):
        plan = plan_reset(settings, group, ("earliest", None))
        assert plan.moves and {m.new for m in plan.moves} == {0} and plan.reread > 0
        execute(settings, plan)
    with pipeline(settings) as procs:
        # Wait on what each group has handled, not on its position: the position moves
        # when records are fetched, before they are handled.
        handled = ((0, Topic.UPGRADE_REQUESTED, 3), (1, Topic.LICENSE_BATCHES, 9), (2, Topic.LICENSE_BATCH_COMPLETED, 9))
        wait_for(lambda: all(procs[i].metrics.records_by_topic.get(topic, 0) >= n for i, topic, n in handled),
                 120, interval=0.3, message="every group to replay to the end")
        replayed = sum(p.metrics.records for p in procs)
    assert replayed >= 3 + 9 + 9  # requests, batches and completions were all read again
    assert counts(settings) == before
    directory = SqliteDirectory.for_settings(settings)
    assert directory.count_holders("t0", "t0-sub-m365_business_standard") == 0
    assert len(directory.holders("t0", request("t0", "ord-0", 12)["target_subscription_id"])) == 12


class BrokenDirectory:
    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def holders(self, *args):
        raise ConnectionError("directory down")

    def holders_many(self, pairs):
        raise ConnectionError("directory down")


def test_a_dead_letter_is_redriven_once_after_the_incident(settings, capsys, monkeypatch):
    seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 3)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request("contoso", "ord-r", 3))])
    broken = intake.processor(settings, directory=BrokenDirectory(SqliteDirectory.for_settings(settings)),
                              retry_backoff_s=0.01, commit_interval_ms=50)
    with running(broken):
        wait_for(lambda: dead_letters(settings, "upgrade.requested.dlq"), 30, message="the dead letter")
    assert values(settings, Topic.UPGRADE_STATUS) == []

    monkeypatch.setenv("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix)
    assert main(["dlq", "list"]) == 0
    listing = capsys.readouterr().out
    assert "upgrade.requested.dlq" in listing and "1 from " in listing and "ConnectionError" in listing

    with running(intake.processor(settings, commit_interval_ms=50)):  # the directory is back
        assert main(["dlq", "redrive", "upgrade.requested.dlq", "--group", "planshift-intake"]) == 0
        assert "1 re-drive" in capsys.readouterr().out  # the plan only
        assert main(["dlq", "redrive", "upgrade.requested.dlq", "--group", "planshift-intake", "--execute"]) == 0
        assert "re-drove 1 dead letters" in capsys.readouterr().out
        wait_for(lambda: any(v["status"] == "migrating" for v in values(settings, Topic.UPGRADE_STATUS)), 30,
                 message="the re-driven request to be handled")
        assert redrive(settings, "upgrade.requested.dlq").redriven == 0  # once only
    statuses = [v["status"] for v in values(settings, Topic.UPGRADE_STATUS)]
    assert statuses == ["accepted", "migrating"]
    redriven = [r for r in values(settings, Topic.UPGRADE_REQUESTED)]
    assert len(redriven) == 2  # the original and its re-drive; intake started one upgrade


def test_replay_refuses_a_bad_choice(settings, capsys, monkeypatch):
    monkeypatch.setenv("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    assert main(["replay", "planshift-nobody", "--to-start"]) == 1
    assert "no committed offsets" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["replay", "planshift-nobody", "--by-duration", "an hour"])
    assert exited.value.code == 2
    assert "is not a duration" in capsys.readouterr().err


def committed_offsets(settings, group):
    from kafka.errors import KafkaError

    from planshift.kafka import clients

    admin = clients.admin(settings)
    try:
        found = admin.list_group_offsets({settings.topic(group): None})
    except KafkaError:  # the group's coordinator is still loading (a fresh broker): nothing yet
        return {}
    finally:
        admin.close()
    found = found.get(settings.topic(group), found)
    return {tp.partition: o.offset for tp, o in found.items()}


def test_replay_prints_its_plan_moves_only_with_execute_and_refuses_a_running_group(settings, capsys, monkeypatch):
    from planshift.kafka.topics import ensure_topic
    from planshift.runtime import ProcessorConfig, Source, StreamProcessor

    monkeypatch.setenv("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix)
    ensure_topic(settings, settings.topic("numbers"), 2, {})
    # keyed, so both partitions hold some (records without a key all go to one sticky partition)
    produce(settings, "numbers", [(str(n), {"n": n}) for n in range(10)])

    def reader():
        return StreamProcessor(settings, ProcessorConfig(group_id="readers", stateful=False, commit_interval_ms=50,
                                                         sources=(Source("numbers", lambda ctx, e: None, schema=""),)))

    first = reader()
    with running(first):
        wait_for(lambda: sum(committed_offsets(settings, "readers").values()) == 10, 30, message="all committed")
        assert main(["replay", "readers", "--to-earliest"]) == 1  # refused, dry run or not
        refusal = capsys.readouterr().err
        assert "active member" in refusal and "stop its consumers first" in refusal
        assert main(["replay", "readers", "--to-earliest", "--execute"]) == 1
    ends = committed_offsets(settings, "readers")
    assert sorted(ends) == [0, 1]

    # A stopped consumer left its group: the dry run plans, and moves nothing.
    assert main(["replay", "readers", "--shift-by", "-3"]) == 0
    out = capsys.readouterr().out
    planned = sum(min(3, end) for end in ends.values())  # clamped to what each partition holds
    assert f"{planned} records to re-read" in out and "dry run: nothing moved" in out
    assert all(f"numbers[{p}]  {end} → {max(0, end - 3)}" in out for p, end in ends.items())
    assert committed_offsets(settings, "readers") == ends

    # --execute does what the plan said; one partition only with TOPIC:P.
    assert main(["replay", "readers", "--topic", "numbers:0", "--shift-by", "-3", "--execute"]) == 0
    assert "moved 1 partitions" in capsys.readouterr().out
    assert committed_offsets(settings, "readers") == {0: max(0, ends[0] - 3), 1: ends[1]}
    # clamped to what the partition holds, as kafka-consumer-groups does
    assert main(["replay", "readers", "--to-offset", "999", "--execute"]) == 0
    assert committed_offsets(settings, "readers") == ends
    assert main(["replay", "readers", "--by-duration", "PT1H", "--execute"]) == 0  # everything is newer
    assert committed_offsets(settings, "readers") == {0: 0, 1: 0}
    assert "re-reads" in capsys.readouterr().out

    second = reader()
    with running(second):
        wait_for(lambda: second.metrics.records == 10, 30, message="the replay re-read all 10")
    assert main(["replay", "readers", "--topic", "numbers:7", "--to-latest"]) == 1
    assert "has no partition 7" in capsys.readouterr().err


def test_redrive_chooses_by_error_class_and_offsets_plans_first_and_never_sends_one_twice(settings, capsys,
                                                                                        monkeypatch):
    """Dead letters of three kinds; the operator re-drives one kind, then one offset, and
    the dry runs in between change nothing."""
    from planshift.kafka.topics import ensure_topic
    from planshift.runtime import ProcessorConfig, Source, StreamProcessor

    monkeypatch.setenv("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix)
    for name in ("numbers", "numbers.dlq"):
        ensure_topic(settings, settings.topic(name), 1, {})
    seen = Counter()

    def handle(ctx, event):
        seen[event["n"]] += 1
        if "redriven" in event:
            return
        if event["n"] in (1, 2):
            raise ConnectionError("licence service unavailable")
        if event["n"] == 3:
            raise ValueError("no such plan")

    def worker():
        return StreamProcessor(settings, ProcessorConfig(
            group_id="workers", stateful=False, commit_interval_ms=50, max_attempts=1,
            sources=(Source("numbers", handle, schema=""),)))

    produce(settings, "numbers", [("k", {"n": n}) for n in range(4)])
    first = worker()
    with running(first):
        wait_for(lambda: first.metrics.dead_letters == 3 and first.metrics.commits > 0, 30,
                 message="three dead letters")
    letters = dead_letters(settings, "numbers.dlq")
    assert [r.headers["dlq.error.class"] for r in letters] == [b"ConnectionError"] * 2 + [b"ValueError"]
    trace = letters[2].headers["dlq.error.stacktrace"].decode()
    assert trace.startswith("Traceback") and "in handle" in trace and "ValueError: no such plan" in trace

    assert main(["dlq", "redrive", "numbers.dlq", "--error-class", "ConnectionError"]) == 0  # a dry run
    out = capsys.readouterr().out
    assert "2 re-drive, 1 not chosen" in out and "dry run: nothing re-driven" in out
    assert len(values(settings, "numbers")) == 4  # nothing was sent

    assert main(["dlq", "redrive", "numbers.dlq", "--error-class", "ConnectionError", "--execute"]) == 0
    assert "re-drove 2 dead letters" in capsys.readouterr().out
    assert main(["dlq", "redrive", "numbers.dlq", "--execute"]) == 0  # everything, but the two are done
    out = capsys.readouterr().out
    assert "2 re-driven before" in out and "re-drove 1 dead letters" in out
    assert main(["dlq", "redrive", "numbers.dlq", "--from-offset", "0", "--to-offset", "2", "--execute"]) == 0
    assert "re-drove 0 dead letters" in capsys.readouterr().out  # nothing twice by accident
    resent = [r for r in read_topic_raw(settings, "numbers")[4:]]
    assert sorted(v["n"] for v in (r.value for r in resent)) == [1, 2, 3]
    assert all("dlq.redriven.from" in r.headers and "dlq.error.class" not in r.headers for r in resent)

    # a second re-drive while one runs (a member of its group) is refused, dry run or not
    from planshift.kafka import clients
    from planshift.ops.deadletters import REDRIVE_GROUP

    other = clients.consumer(settings, settings.topic(REDRIVE_GROUP), settings.topic("numbers.dlq"))
    try:
        wait_for(lambda: other.poll(timeout_ms=100) is not None and other.assignment(), 30, message="joined")
        assert main(["dlq", "redrive", "numbers.dlq"]) == 1
        assert "another re-drive is running" in capsys.readouterr().err
    finally:
        other.close()

    with pytest.raises(SystemExit) as exited:
        main(["dlq", "redrive", "numbers.dlq", "--since", "yesterday"])
    assert exited.value.code == 2
    assert main(["dlq", "redrive", "numbers.dlq", "--from-offset", "3", "--to-offset", "1"]) == 2


def read_topic_raw(settings, topic):
    from planshift.kafka.reader import read_topic

    return read_topic(settings, settings.topic(topic))

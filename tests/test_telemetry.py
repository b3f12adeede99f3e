"""/metrics, /healthz and /readyz (issue 14): counted once per committed transaction,
scraped from real running consumers, ready only once state is restored."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from consumers import intake
from planshift.contract import Topic
from planshift.events import with_envelope
from planshift.kafka import clients
from planshift.kafka.topics import ensure_topic
from planshift.runtime import ProcessorConfig, Source, StreamProcessor
from planshift.runtime.metrics import Histogram, Metrics, tally_output
from producers.samples import upgrade_request
from tests.conftest import produce, running, seed_users, spawn, wait_for
from tests.drivers import Pipeline


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    """The value of the one sample named `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    return sum(found) if found else None


def probe(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- without a broker --------------------------------------------------------------------
def test_outcomes_count_when_their_transaction_commits_and_never_when_it_aborts():
    metrics = Metrics()
    tally_output(metrics.pending, Topic.CREDIT_ISSUED, {"currency": "EUR", "amount_minor": 70_000})
    tally_output(metrics.pending, Topic.UPGRADE_STATUS, {"status": "completed"})
    metrics.count_dead_letter(Topic.LICENSE_BATCHES)
    metrics.dropped()  # aborted: the credit was never issued
    assert metrics.outcomes == {}
    tally_output(metrics.pending, Topic.CREDIT_ISSUED, {"currency": "EUR", "amount_minor": 70_000})
    tally_output(metrics.pending, Topic.LICENSE_BATCH_COMPLETED, {"outcome": "migrated", "users_migrated": 500})
    metrics.committed()
    tally_output(metrics.pending, Topic.CREDIT_ISSUED, {"currency": "EUR", "amount_minor": 5})
    metrics.committed()
    assert metrics.outcomes == {("credits", "EUR"): 2, ("credited_minor", "EUR"): 70_005,
                                ("batches", "migrated"): 1, ("users_migrated", ""): 500}


def test_a_histogram_keeps_cumulative_buckets_as_prometheus_reads_them():
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4 and abs(histogram.sum - 3.65) < 1e-9


def test_intake_measures_what_is_in_flight_and_for_how_long(tmp_path):
    pipeline = Pipeline(tmp_path)
    pipeline.seed("contoso", 30)
    pipeline.publish(pipeline.request("contoso", "ord-1", licenses=30))
    pipeline.run(pipeline.intake)  # migrating; no worker has taken a batch yet
    pipeline.clock.advance(2 * 3600)
    gauges = intake.in_flight_gauges(pipeline.intake.engine, int(pipeline.clock() * 1000))
    assert gauges[("in_flight", "migrating")] == 1
    assert gauges[("oldest_in_flight_s", "migrating")] == 2 * 3600  # the runbook's alert: over an hour
    assert gauges[("in_flight", "credit_check_pending")] == 0
    pipeline.run()  # the workers and settlement finish it
    gauges = intake.in_flight_gauges(pipeline.intake.engine, int(pipeline.clock() * 1000))
    assert gauges[("in_flight", "migrating")] == 0 and gauges[("oldest_in_flight_s", "migrating")] == 0
    outcomes = pipeline.settle.engine.metrics.outcomes
    assert outcomes[("upgrades", "completed")] == 1 and outcomes[("billing_switches", "")] == 1
    assert pipeline.migrate.engine.metrics.outcomes[("users_migrated", "")] == 30


def test_restored_intake_state_knows_since_when_an_upgrade_is_in_flight(tmp_path):
    pipeline = Pipeline(tmp_path)
    pipeline.seed("contoso", 30)
    pipeline.publish(pipeline.request("contoso", "ord-1", licenses=30))
    pipeline.run(pipeline.intake)
    pipeline.clock.advance(90 * 60)
    pipeline.intake.restart()  # folded from upgrade.status: the moment comes from its occurred_at
    gauges = intake.in_flight_gauges(pipeline.intake.engine, int(pipeline.clock() * 1000))
    assert gauges[("oldest_in_flight_s", "migrating")] == 90 * 60


# -- on the broker ---------------------------------------------------------------------
def test_a_running_intake_serves_metrics_that_move_with_the_records_it_handled(settings, tmp_path):
    today = datetime.now(timezone.utc).date()
    for n in range(3):
        seed_users(settings, f"t{n}", f"t{n}-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 4)
    port = free_port()
    process = spawn(settings, tmp_path / "intake.log", "run", "intake", "--metrics-port", str(port),
                    "--commit-interval-ms", "50")
    try:
        wait_for(lambda: probe(port, "/readyz")[0] == 200, 60, interval=0.2,
                 message=f"intake ready ({(tmp_path / 'intake.log').read_text()[-2000:]})")
        assert probe(port, "/healthz")[0] == 200
        before = scrape(port)
        assert sample(before, "planshift_records_total", topic=Topic.UPGRADE_REQUESTED) in (None, 0)
        requests = [(f"t{n}", with_envelope(upgrade_request(f"t{n}", f"ord-{n}", today=today, licenses=4),
                                            "upgrade.requested")) for n in range(3)]
        produce(settings, Topic.UPGRADE_REQUESTED, requests + [("t9", {"not": "a request"})])

        def moved():
            now = scrape(port)
            return now if sample(now, "planshift_records_total", topic=Topic.UPGRADE_REQUESTED) == 4 \
                and sample(now, "planshift_upgrades_total", status="migrating") == 3 else None

        after = wait_for(moved, 60, interval=0.3, message="intake's counters to move")
        assert sample(after, "planshift_upgrades_total", status="accepted") == 3
        assert sample(after, "planshift_dead_letters_total", topic=Topic.UPGRADE_REQUESTED) == 1
        assert sample(after, "planshift_transactions_committed_total") >= 1
        assert sample(after, "planshift_handler_duration_seconds_count", topic=Topic.UPGRADE_REQUESTED) == 4
        assert sample(after, "planshift_partitions_assigned") == 6
        assert sample(after, "planshift_ready") == 1
        assert sample(after, "process_resident_memory_bytes") > 0
        # every partition read to its end: the lag (measured every few seconds) comes to zero
        def lags():
            found = [v for (name, _), v in scrape(port).items() if name == "planshift_consumer_lag"]
            return found if found and not any(found) else None

        assert len(wait_for(lags, 30, interval=0.5, message="every partition's lag measured as 0")) == 18  # 3 topics × 6
        wait_for(lambda: sample(scrape(port), "planshift_upgrades_in_flight", status="migrating") == 3,
                 30, interval=0.5, message="three upgrades in flight")
        # every metric the runbook's table promises for a consumer is served
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            families = {f.name for f in text_string_to_metric_families(response.read().decode())}
        runbook = (Path(__file__).resolve().parent.parent / "docs" / "RUNBOOK.md").read_text()
        documented = {re.sub(r"_total$", "", m) for m in re.findall(r"^\| `(planshift_[a-z_]+)`", runbook, re.M)
                      if not m.startswith("planshift_reconciliation_")}
        assert len(documented) >= 20 and documented <= families, documented - families
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0


def _key_on(partition: int, partitions: int = 3) -> str:
    from planshift.kafka.partitioning import murmur2

    return next(k for k in (f"k{i}" for i in range(1000))
                if (murmur2(k.encode()) & 0x7FFFFFFF) % partitions == partition)


def test_readyz_turns_ready_only_once_the_state_is_restored(settings):
    ensure_topic(settings, settings.topic("numbers"), 3, {})
    ensure_topic(settings, settings.topic("totals"), 1, {})
    changelog = settings.topic("slow.state.changelog")
    ensure_topic(settings, changelog, 3, {"cleanup.policy": "compact"})
    producer = clients.producer(settings, linger_ms=50, batch_size=512 * 1024)
    for i in range(120_000):
        producer.send(changelog, key=f"filler:{i}".encode(), value=b'{"pad": "xxxxxxxxxxxxxxxxxxxxxxxx"}',
                      partition=0)
    producer.flush(60)
    producer.close()

    def handle(ctx, event):
        ctx.put(f"seen:{ctx.key}", True)
        ctx.emit("totals", ctx.key, {"key": ctx.key}, event_type="total")

    processor = StreamProcessor(settings.with_(metrics_port=0), ProcessorConfig(
        group_id="slow", sources=(Source("numbers", handle, schema=""),), commit_interval_ms=50))
    answers: list[tuple[int, dict]] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            if processor.telemetry is not None:
                answers.append(probe(processor.telemetry.port, "/readyz"))
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    produce(settings, "numbers", [(_key_on(0), {"n": 1})])
    with running(processor, timeout=60):
        wait_for(lambda: answers and answers[-1][0] == 200, 90, message="ready")
        metrics = scrape(processor.telemetry.port)
        done.set()
        watcher.join(5)
    restoring = [body for code, body in answers if code == 503 and body.get("restoring")]
    assert restoring, f"never seen not ready while restoring ({answers[:3]}…)"
    assert 0 in restoring[0]["restoring"]  # the partition with the long changelog
    first_ready = next(i for i, (code, _) in enumerate(answers) if code == 200)
    assert all(code == 200 for code, _ in answers[first_ready:])  # ready stays ready
    assert sample(metrics, "planshift_state_restored_keys_total") == 120_000
    assert sample(metrics, "planshift_state_restore_duration_seconds_count") >= 1
    assert sample(metrics, "planshift_rebalances_total", event="assigned") >= 1

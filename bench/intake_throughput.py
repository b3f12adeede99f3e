"""Intake throughput with exactly-once on, beside a plain kafka-python consume→produce loop.

Both read the same pre-filled `upgrade.requested` topic (N small-tenant requests, 3 users
each) in the same run on the same broker. The plain loop decodes each record and
produces one record per input with an idempotent producer and no transactions. Intake
validates each request against its JSON Schema, reads the licence holders from the
SQLite directory, evaluates every eligibility rule, keeps the tenant's lock in its state
store, emits `accepted`, one batch and `migrating` per request, and commits all of it
with the consumed offsets in Kafka transactions (its production settings: commit at
most every second under load).

    python bench/intake_throughput.py [--requests 20000] [--rounds 5] [--instances N]

A second plain loop emits three records per input, intake's output volume (accepted,
migrating, one batch), still without transactions, to show what the outputs alone cost.

Each rate runs from the first record polled to the last output flushed (intake: its
last transaction committed), so the start-up of each (group join, intake's state
restore and table bootstrap) is left out of both.

Last, intake runs as `--instances` processes sharing the partitions (as N `planshift run
intake --instance I` processes would), for the scaling; that figure is not part of the ratio.

Goal (issue 3): intake keeps at least 40% of the plain loop's rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import bench_settings  # noqa: E402
from cli import tuning  # noqa: E402
from consumers import intake  # noqa: E402
from planshift.contract import Topic  # noqa: E402
from planshift.events import (
    encode_json,
    event_headers,
    with_envelope,  # noqa: E402
)
from planshift.kafka import clients  # noqa: E402
from planshift.kafka.topics import create_topics, ensure_topic  # noqa: E402
from planshift.storage.directory import Licence, SqliteDirectory  # noqa: E402
from producers.samples import upgrade_request  # noqa: E402


def seed_directory(settings, n: int) -> None:
    directory = SqliteDirectory.for_settings(settings)
    directory.put(Licence(f"t{t:06d}", f"u{u}", f"t{t:06d}-sub-m365_business_standard", "M365_BUSINESS_STANDARD")
                  for t in range(n) for u in range(3))
    directory.close()


def prefill(settings, n: int) -> None:
    producer = clients.producer(settings, linger_ms=20, batch_size=512 * 1024)
    today = date.today()
    topic = settings.topic(Topic.UPGRADE_REQUESTED)
    headers = event_headers(Topic.UPGRADE_REQUESTED)
    for t in range(n):
        # Ids of this round's own (the directory keeps every id it has seen, for good): each
        # round's requests are new upgrades, not repeats of the round before.
        request = with_envelope(upgrade_request(f"t{t:06d}", f"{settings.topic_prefix}ord-{t:06d}", today=today,
                                                licenses=3),
                                "upgrade.requested")
        producer.send(topic, key=request["tenant_id"].encode(), value=encode_json(request),
                      headers=headers)
    producer.flush()
    producer.close()


def plain_loop(settings, n: int, outputs: int = 1) -> float:
    """The baseline: consume, decode, produce `outputs` records per input, commit offsets now and then."""
    out = settings.topic(f"bench.plain{outputs}.out")
    ensure_topic(settings, out, 6, {})
    consumer = clients.consumer(settings, settings.topic(f"bench-plain{outputs}"),
                                      max_poll_records=2000)
    consumer.subscribe([settings.topic(Topic.UPGRADE_REQUESTED)])
    producer = clients.producer(settings, linger_ms=5, batch_size=256 * 1024)
    began = None
    seen = 0
    while seen < n:
        batches = consumer.poll(timeout_ms=500)
        if batches and began is None:
            began = time.perf_counter()
        for records in batches.values():
            for r in records:
                value = json.loads(r.value)
                for i in range(outputs):
                    producer.send(out, key=r.key, value=encode_json(
                        {"upgrade_id": value["upgrade_id"], "n": i, "tenant_id": value["tenant_id"]}),
                        headers=HEADERS)
                seen += 1
        consumer.commit_async()
    producer.flush()
    consumer.commit()
    elapsed = time.perf_counter() - began
    consumer.close()
    producer.close()
    return elapsed


HEADERS = [("event_type", b"bench"), ("schema_version", b"1")]


def intake_run(settings, n: int, **config) -> float:
    processor = intake.processor(settings, **config)
    processor.run(until=lambda p: p.metrics.records_by_topic.get(Topic.UPGRADE_REQUESTED, 0) >= n)
    return processor.metrics.finished_at - processor.metrics.first_record_at


def _intake_child(settings, instance: int, stop, results) -> None:
    tuning.for_consumer()
    processor = intake.processor(settings, instance=str(instance))
    processor.run(until=lambda p: stop.is_set())
    results.put((processor.metrics.first_record_at, processor.metrics.finished_at))


def intake_instances(settings, n: int, instances: int, timeout: float = 300) -> float:
    """`instances` intake processes sharing the partitions, as `planshift run intake
    --instances N` runs them: from the first record any of them took to the last commit
    (CLOCK_MONOTONIC is one clock for every process on the machine)."""
    import multiprocessing

    from planshift.kafka.reader import stable_end_offsets

    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    children = [context.Process(target=_intake_child, args=(settings, i, stop, results)) for i in range(instances)]
    for child in children:
        child.start()
    deadline = time.monotonic() + timeout
    try:
        while stable_end_offsets(settings, settings.topic(Topic.LICENSE_BATCHES)) < n:  # one batch per request
            if time.monotonic() > deadline or not all(c.is_alive() for c in children):
                raise SystemExit("intake instances did not finish")
            time.sleep(0.05)
    finally:
        stop.set()
        spans = [results.get(timeout=60) for _ in children]
        for child in children:
            child.join(timeout=60)
    return max(end for _, end in spans if end) - min(start for start, _ in spans if start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of (plain loop, intake) on fresh topics; medians are reported")
    parser.add_argument("--instances", type=int, default=0,
                        help="also run intake as this many processes (default 0: skip); reported beside, not in the ratio")
    args = parser.parse_args()
    tuning.for_consumer()  # a process entry point, as `planshift run` is
    n = args.requests
    plain_rates, plain3_rates, intake_rates, ratios = [], [], [], []
    with bench_settings() as base:
        seed_directory(base, n)
        for round_no in range(1, args.rounds + 1):
            settings = base.with_(topic_prefix=f"{base.topic_prefix}r{round_no}.")
            create_topics(settings)
            prefill(settings, n)
            plain = n / plain_loop(settings, n)
            plain3 = n / plain_loop(settings, n, outputs=3)
            eos = n / intake_run(settings, n)
            plain_rates.append(plain)
            plain3_rates.append(plain3)
            intake_rates.append(eos)
            ratios.append(eos / plain)
            print(f"round {round_no}: plain 1:1 {plain:7.0f}/s   plain 1:3 {plain3:7.0f}/s   intake {eos:7.0f}/s   "
                  f"ratio {eos / plain:.2f}", flush=True)
        multi = None
        if args.instances > 1:
            settings = base.with_(topic_prefix=f"{base.topic_prefix}x.")
            create_topics(settings)
            prefill(settings, n)
            multi = n / intake_instances(settings, n, args.instances)
    ratio = statistics.median(ratios)
    print(f"plain consume→produce loop : {statistics.median(plain_rates):8.0f} records/s (median of {args.rounds})")
    print(f"  … emitting 3 per input   : {statistics.median(plain3_rates):8.0f} records/s in (intake's output volume, "
          f"no transactions)")
    print(f"intake, exactly-once       : {statistics.median(intake_rates):8.0f} requests/s (median of {args.rounds})")
    print(f"ratio intake/plain         : {ratio:.2f} median, {min(ratios):.2f}–{max(ratios):.2f} range  "
          f"(goal ≥ 0.40: {'met' if ratio >= 0.40 else 'NOT met'})")
    print(f"ratio intake/plain 1:3     : {statistics.median(intake_rates) / statistics.median(plain3_rates):.2f}")
    if multi is not None:
        print(f"intake, {args.instances} processes       : {multi:8.0f} requests/s (one run; "
              f"{multi / statistics.median(plain_rates):.2f} of the plain loop's median)")


if __name__ == "__main__":
    main()

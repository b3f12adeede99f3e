"""Restart time and resident memory of intake, settlement and migration after 1,000,000 upgrades.

What a restarted consumer must rebuild before it handles a record is what the pipeline
left in Kafka after N upgrades (default 1,000,000 over 200,000 tenants, one batch each),
so the benchmark writes exactly that, with the project's own event builders, and does
not run a million upgrades through the pipeline first:

  upgrade.status        accepted, migrating (step 0) and completed per upgrade (3 N
                        events): intake folds all of them back into its tenants' state
  settle's changelog    upgrade:{id} → "completed:{tenant_id}", expiring
                        FINAL_KEPT after it was written, as settlement writes it
  migrate's changelog   done:{id}:0 → true, expiring with license.batches' lifetime

Then each consumer is started as its own process (as `planshift run …` would) and the
benchmark prints, per consumer: wall time from process start until every partition's
store is whole (the process is ready), the time spent restoring, the keys restored, the
longest round of the poll loop meanwhile (a restore in the loop keeps it short, so the
member never nears `max.poll.interval.ms` nor its session timeout), and the resident
memory (RSS, and its peak) once ready, beside the same consumer started on empty topics.

Last, months later: settlement and migration started with their clocks 70 days on
delete every key (all are past their expiry) and write the tombstones; started once
more, they restore no key. (Their memory then is that of reading the changelog's
records, keys and tombstones, which compaction removes in time; not of keeping them.)

    python bench/restart.py [--upgrades 1000000] [--tenants 200000]

Goals (issue 12): a restart of intake and settle after 1M upgrades is measured, the
loop's longest round stays under the session timeout (15 s), and expired state leaves
memory flat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SESSION_TIMEOUT_S = 15.0
RESULT = "bench-result "  # the child's report line, among its logs
DAY_S = 86400


def _memory_mb() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


# -- the child: one consumer, until its state is whole (and, months on, expired) ---------
def child(role: str, clock_offset_days: float) -> None:
    from cli import tuning
    from planshift.settings import Settings

    tuning.for_consumer()
    settings = Settings.from_env()
    module = __import__(f"consumers.{role}", fromlist=["processor"])
    offset = clock_offset_days * DAY_S
    processor = module.processor(settings, instance="bench", clock=lambda: time.time() + offset)
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    expected = sum(1 for _ in _source_partitions(settings, processor))
    while not (len(processor.assigned_partitions) == expected and not processor.restoring):
        if not thread.is_alive():
            raise SystemExit("the processor stopped before it was ready")
        time.sleep(0.05)
    rss, peak = _memory_mb()
    report = {"restored_keys": processor.metrics.restored_keys,
              "restore_s": round(processor.metrics.restore_seconds, 2),
              "longest_round_s": round(processor.longest_round_s, 3), "rss_mb": round(rss), "peak_mb": round(peak)}
    if offset:
        # Past their expiry: the loop deletes them between polls (and commits the tombstones).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and (processor.metrics.expired_keys < processor.metrics.restored_keys
                                               or processor.checkpoint.open):
            time.sleep(0.2)
        report["expired_keys"] = processor.metrics.expired_keys
        report["live_keys"] = sum(len(s) for s in processor.engine.stores.values())
    print(RESULT + json.dumps(report), flush=True)
    processor.stop()
    thread.join(60)


def _source_partitions(settings, processor):
    from planshift.kafka.topics import existing_partitions

    counts = existing_partitions(settings, list(processor._sources))
    for topic, count in counts.items():
        yield from ((topic, p) for p in range(count))


def run_child(settings, role: str, clock_offset_days: float = 0) -> dict:
    env = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PLANSHIFT_TOPIC_PREFIX": settings.topic_prefix, "PLANSHIFT_DATA_DIR": str(settings.data_dir),
           "PLANSHIFT_LOG_LEVEL": "warning"}
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, __file__, "--child", role, "--clock-offset-days",
                                str(clock_offset_days)], env=env, stdout=subprocess.PIPE, text=True)
    report = ready = None
    for line in process.stdout:
        if line.startswith(RESULT):
            report = json.loads(line[len(RESULT):])
            ready = time.monotonic() - began
    process.wait(120)
    if process.returncode != 0 or report is None:
        raise SystemExit(f"{role} ended with {process.returncode}")
    return {"ready_s": round(ready, 2), **report}


# -- what the pipeline left behind after N upgrades -------------------------------------
def write_history(settings, upgrades: int, tenants: int) -> None:
    from consumers import migrate, settle
    from planshift.contract import Status, Topic, lifetime_ms
    from planshift.domain.settlement import Migration
    from planshift.events import encode_json, encode_key, event_headers, upgrade_status
    from planshift.kafka import clients
    from planshift.kafka.partitioning import murmur2
    from planshift.kafka.topics import ensure_topic
    from planshift.runtime.state import EXPIRES_HEADER, changelog_topic

    now_ms = int(time.time() * 1000)
    settle_log = changelog_topic(settings, settle.GROUP_ID)
    migrate_log = changelog_topic(settings, migrate.GROUP_ID)
    ensure_topic(settings, settle_log, 6, {"cleanup.policy": "compact"})
    ensure_topic(settings, migrate_log, 12, {"cleanup.policy": "compact"})
    settle_expires = str(now_ms + int(settle.FINAL_KEPT.total_seconds() * 1000)).encode()
    migrate_expires = str(now_ms + lifetime_ms(Topic.LICENSE_BATCHES)).encode()
    status_topic, headers = settings.topic(Topic.UPGRADE_STATUS), event_headers(Topic.UPGRADE_STATUS)
    producer = clients.producer(settings, linger_ms=100, batch_size=1024 * 1024)
    began = time.monotonic()
    for n in range(upgrades):
        tenant, upgrade = f"t{n % tenants:07d}", f"ord-{n:08d}"
        key = encode_key(tenant)
        progress = {"batches_done": 0, "batch_count": 1, "users_done": 0, "users_total": 3}
        for status, fields in ((Status.ACCEPTED, {}),
                               (Status.MIGRATING, {"step": 0, "progress": progress,
                                                   "admin_locked_until": "2026-12-02T09:30:00Z"}),
                               (Status.COMPLETED, {"progress": {**progress, "batches_done": 1, "users_done": 3},
                                                   "new_subscription_id": f"{tenant}-sub-premium-{upgrade}",
                                                   "credit_minor": 1234, "forfeit_minor": 0, "currency": "EUR",
                                                   "service_plan_resets": 0, "admin_locked_until": None})):
            producer.send(status_topic, key=key, headers=headers, value=encode_json(
                upgrade_status(tenant, upgrade, status, occurred_at="2026-11-17T09:30:00Z", **fields)))
        up = upgrade.encode()
        producer.send(settle_log, key=b"upgrade:" + up, partition=(murmur2(up) & 0x7FFFFFFF) % 6,
                      value=encode_json(Migration(status=Status.COMPLETED, tenant_id=tenant).as_state()),
                      headers=[(EXPIRES_HEADER, settle_expires)])
        producer.send(migrate_log, key=b"done:" + up + b":0", partition=(murmur2(up) & 0x7FFFFFFF) % 12,
                      value=b"true", headers=[(EXPIRES_HEADER, migrate_expires)])
        if n and n % 100_000 == 0:
            print(f"  {n:,} upgrades written ({time.monotonic() - began:.0f}s)", flush=True)
    producer.flush(600)
    producer.close()
    print(f"history of {upgrades:,} upgrades ({5 * upgrades:,} records) written in {time.monotonic() - began:.0f}s")


def _row(name: str, r: dict) -> str:
    extra = ""
    if "expired_keys" in r:
        extra = f"  expired {r['expired_keys']:>9,}  live after {r['live_keys']:,}"
    return (f"  {name:<26} ready {r['ready_s']:>6.1f}s  restore {r['restore_s']:>6.1f}s  "
            f"keys {r['restored_keys']:>9,}  longest round {r['longest_round_s']:>5.2f}s  "
            f"RSS {r['rss_mb']:>5} MB (peak {r['peak_mb']})" + extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrades", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=200_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--clock-offset-days", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.clock_offset_days)
        return 0

    from bench._harness import bench_settings
    from planshift.storage.directory import SqliteDirectory

    roles = ("intake", "settle", "migrate")
    with bench_settings() as settings:
        SqliteDirectory.for_settings(settings).close()
        empty = {role: run_child(settings, role) for role in roles}
        write_history(settings, args.upgrades, args.tenants)
        full = {role: run_child(settings, role) for role in roles}
        later = {role: run_child(settings, role, clock_offset_days=70) for role in ("settle", "migrate")}
        after = {role: run_child(settings, role, clock_offset_days=70) for role in ("settle", "migrate")}

    print(f"\nrestart after {args.upgrades:,} upgrades (one process per consumer):")
    for role in roles:
        print(_row(f"{role}, empty topics", empty[role]))
        print(_row(f"{role}, {args.upgrades:,} upgrades", full[role]))
    print("\n70 days later (every settled upgrade and batch marker past its expiry):")
    for role in ("settle", "migrate"):
        print(_row(f"{role}, expiring", later[role]))
        print(_row(f"{role}, restarted after", after[role]))
    longest = max(r["longest_round_s"] for group in (full, later, after) for r in group.values())
    flat = all(later[r]["live_keys"] == 0 and after[r]["restored_keys"] == 0 for r in after)
    print(f"\nlongest round of any loop: {longest:.2f}s (goal < session timeout {SESSION_TIMEOUT_S:.0f}s): "
          f"{'met' if longest < SESSION_TIMEOUT_S else 'NOT met'}")
    print(f"every expired key deleted, and none restored after: {'met' if flat else 'NOT met'}")
    return 0 if longest < SESSION_TIMEOUT_S and flat else 1


if __name__ == "__main__":
    sys.exit(main())

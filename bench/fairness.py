"""Issue 15: "many users take longer" — for that tenant only. Against the reference licence
service (`planshift directory serve`: at most 20 users a call, a per-tenant quota answered
429 + Retry-After beyond it, 20 ms a call), with intake, settlement and four migration
workers as separate processes, every one reaching the licence directory through the API:

1. fairness: 50 small tenants (10 users) alone, then 50 more requested right after a
   100,000-user tenant. Their request → completed, median and maximum. Goals: the median
   behind the large tenant within 1.5× of the median alone, the maximum within 2× of the
   maximum alone. Also the large tenant's migration against its quota (goal ≥ 90%) and the
   share of calls answered 429 (goal < 1%).
2. close to the limit: 50 tenants of 5,000 users migrating together, against the sum of
   their quotas (goal ≥ 90%, up to what this machine's CPU allows: the same 250,000 users
   without a quota give that bound, printed).
3. latency: a steady 100 requests a second of 10-user tenants for 60 s, after 15 s of the
   same load that is not counted (a freshly started broker's JVM compiles its hot paths
   under its first load: without the warm-up its first 10 s show seconds of JIT, printed
   apart); request → completed p50 and p99 (goal p99 ≤ 3 s on this machine), and where
   the time goes between the steps.

    python bench/fairness.py [--scenario all|fairness|limit|latency] [--quota 1000/10] [--limit-quota 50/10]
                             [--large-users 100000] [--latency-seconds 60] [--rate 100] [--warm-seconds 15]

BENCH_LOG_DIR=<folder> keeps each pipeline process's log there, at INFO (slower: every
record's log line is written).

The clock of each upgrade starts when its request is sent and stops when its `completed`
status is visible to a read_committed reader (`StatusView`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import bench_settings, broker_pid, cpu_seconds, wait_settled  # noqa: E402
from planshift.contract import Topic  # noqa: E402
from planshift.events import with_envelope  # noqa: E402
from planshift.kafka import clients  # noqa: E402
from planshift.kafka.reader import read_topic  # noqa: E402
from planshift.kafka.topics import create_topics  # noqa: E402
from planshift.ops.broker import free_port  # noqa: E402
from planshift.ops.view import StatusView  # noqa: E402
from planshift.settings import Quota  # noqa: E402
from planshift.storage.directory import Licence, SqliteDirectory  # noqa: E402
from producers.order_system import UpgradeRequestPublisher  # noqa: E402
from producers.samples import upgrade_request  # noqa: E402

WORKERS = 4
SOURCE_SKU = "M365_BUSINESS_STANDARD"


def source_of(tenant: str) -> str:
    return f"{tenant}-sub-{SOURCE_SKU.lower()}"


def seed(path: Path, tenants: dict[str, int]) -> None:
    store = SqliteDirectory(path)
    store.put(Licence(t, f"u{i:07d}@{t}.example", source_of(t), SOURCE_SKU) for t, n in tenants.items()
              for i in range(n))
    store.close()


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/stats", timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def pipeline(base, quota: Quota, tenants: dict[str, int], latency_ms: float = 20.0):
    """A licence service over a fresh store seeded with `tenants`, fresh topics, and intake,
    settlement and the migration workers on it, all as processes; yields (settings, url)."""
    settings = base.with_(topic_prefix=f"bench-{uuid.uuid4().hex[:6]}.", data_dir=base.data_dir / uuid.uuid4().hex[:6])
    settings.data_dir.mkdir(parents=True)
    create_topics(settings)
    store = settings.data_dir / "vendor" / "directory.sqlite3"
    store.parent.mkdir()
    began = time.monotonic()
    seed(store, tenants)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PLANSHIFT_TOPIC_PREFIX": settings.topic_prefix, "PLANSHIFT_DATA_DIR": str(settings.data_dir),
           "PLANSHIFT_LOG_LEVEL": "WARNING", "PLANSHIFT_DIRECTORY_URL": url, "PLANSHIFT_LICENCE_API_QUOTA": str(quota),
           # no credit checks here: nobody would answer them
           "PLANSHIFT_CREDIT_CHECK_THRESHOLD_MINOR": str(10 ** 15)}
    cli = [sys.executable, "-m", "cli"]
    service = subprocess.Popen([*cli, "directory", "serve", "--port", str(port), "--quota", str(quota),
                                "--latency-ms", str(latency_ms)], env={**env, "PLANSHIFT_DATA_DIR": str(store.parent)},
                               stdout=subprocess.DEVNULL)
    processes = [service]
    try:
        wait_http(url + "/v1/stats")
        logs = os.environ.get("BENCH_LOG_DIR")  # each process's log (at INFO) there, to look into a run
        for command in (["intake"], ["settle"], *(["migrate", "--instance", str(i)] for i in range(WORKERS))):
            out = open(Path(logs) / f"{'-'.join(command).replace('--instance-', '')}.log", "w") if logs else subprocess.DEVNULL
            processes.append(subprocess.Popen([*cli, "run", *command], stdout=out, stderr=subprocess.STDOUT if logs else None,
                                              env={**env, "PLANSHIFT_LOG_LEVEL": "INFO"} if logs else env))
        view = StatusView(settings.with_(directory_url=None, licence_api_quota=None), dead_letters=False)
        print(f"  ({sum(tenants.values()):,} users seeded; service and {len(processes) - 1} processes started "
              f"in {time.monotonic() - began:.0f}s)", flush=True)
        cpu_before = {id(p): cpu_seconds(p.pid) for p in processes}
        broker = broker_pid(base)
        broker_before = cpu_seconds(broker) if broker else 0.0
        yield settings, url, view
        view.close()
        used = {("service" if p is service else " ".join(p.args[4:7])): cpu_seconds(p.pid) - cpu_before[id(p)]
                for p in processes}
        migrating = sum(v for k, v in used.items() if k.startswith("migrate"))
        print("  CPU seconds used while it ran: " + ", ".join(f"{k} {v:.1f}" for k, v in used.items()
                                                              if not k.startswith("migrate"))
              + f", the {WORKERS} migration workers {migrating:.1f}"
              + (f", the broker {cpu_seconds(broker) - broker_before:.1f}" if broker else ""), flush=True)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                print(f"  ({process.args[3:5]} did not stop within 30 s of SIGTERM: killed)")
                process.kill()


def request_for(tenant: str, users: int, n: int) -> dict:
    return with_envelope(upgrade_request(tenant, f"ord-{tenant}-{n}", licenses=users,
                                         source_sku=SOURCE_SKU, target_sku="M365_BUSINESS_PREMIUM",
                                         new_total_cost_minor=users * 2200), Topic.UPGRADE_REQUESTED)


def warm_up(settings, view, publisher) -> None:
    """One small upgrade end to end, so every process has joined and restored first; then
    until the migration workers' group has settled (the first of them to join took every
    partition, and the cooperative rebalances that spread them take a few seconds more)."""
    sent = time.monotonic()
    publisher.publish(request_for("warm-up", 1, 0))
    publisher.flush()
    follow(view, {"ord-warm-up-0": sent}, 120)
    wait_settled(settings, {"planshift-migrate": WORKERS})


def follow(view, sent: dict[str, float], timeout: float, expected: int | None = None) -> dict[str, float]:
    """Seconds from send to `completed` for each upgrade id of `sent` (which a sender may
    still be filling: `expected` of them in all)."""
    took: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    told = time.monotonic()
    waiting: set[str] = {u for u in sent if u in view.upgrades}  # already seen before this call
    while len(took) < (expected or len(sent)):
        if time.monotonic() - told > 15:
            told = time.monotonic()
            print(f"  ... {len(took)} of {expected or len(sent)} completed; {dict(view.counts())}", flush=True)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(sent) - len(took)} upgrades did not complete within {timeout:.0f}s: "
                               f"{dict(view.counts())}")
        view.poll(50)
        now = time.monotonic()
        changed, view.changed = view.changed | waiting, set()
        waiting = set()
        for upgrade_id in changed:
            at = sent.get(upgrade_id)
            if at is None or upgrade_id in took:
                if at is None and expected:
                    waiting.add(upgrade_id)  # seen before the sender's thread noted its time
                continue
            upgrade = view.upgrades[upgrade_id]
            if upgrade.status == "completed":
                took[upgrade_id] = now - at
            elif upgrade.final:
                raise RuntimeError(f"{upgrade_id} ended {upgrade.status}: {upgrade.reasons}")
    return took


def send_small(publisher, names: list[str], sent: dict[str, float]) -> None:
    for name in names:
        sent[f"ord-{name}-1"] = time.monotonic()
        publisher.publish(request_for(name, 10, 1))
    publisher.flush()


def fairness(base, args) -> list[tuple[str, bool]]:
    quota = Quota.parse(args.quota)
    alone, behind = [f"small-a{i:02d}" for i in range(50)], [f"small-b{i:02d}" for i in range(50)]
    tenants = {"warm-up": 1, "large": args.large_users, **{t: 10 for t in alone + behind}}
    print(f"\n== 1. fairness: 50 small tenants alone, then behind a {args.large_users:,}-user tenant "
          f"(quota {quota} per tenant, {quota.per_second * 20:,.0f} users/s)")
    with pipeline(base, quota, tenants) as (settings, url, view), UpgradeRequestPublisher(settings) as publisher:
        warm_up(settings, view, publisher)
        sent: dict[str, float] = {}
        send_small(publisher, alone, sent)
        first = follow(view, sent, 120)
        large_sent = time.monotonic()
        publisher.publish(request_for("large", args.large_users, 1))
        publisher.flush()
        sent = {}
        send_small(publisher, behind, sent)
        second = follow(view, sent, 600)
        large = follow(view, {"ord-large-1": large_sent}, 3600)["ord-large-1"]
        served = stats(url)
    a, b = sorted(first.values()), sorted(second.values())
    print(f"small tenants alone:            median {statistics.median(a):.2f}s, max {a[-1]:.2f}s")
    print(f"behind the large tenant:        median {statistics.median(b):.2f}s, max {b[-1]:.2f}s "
          f"({statistics.median(b) / statistics.median(a):.2f}× and {b[-1] / a[-1]:.2f}×)")
    big = served["tenants"]["large"]
    rate = big["calls"] / big["seconds"] if big["seconds"] else 0.0
    print(f"the large tenant:               {args.large_users:,} users in {large:.1f}s (request → completed); "
          f"{big['calls']:,} calls in {big['seconds']:.1f}s of migration = {rate:.1f} calls/s of its "
          f"{quota.per_second:.1f} ({rate / quota.per_second:.0%})")
    throttled = served["throttled"] / max(1, served["throttled"] + served["calls"])
    print(f"calls answered 429:             {served['throttled']} of {served['throttled'] + served['calls']:,} "
          f"({throttled:.2%}); 503: {served['unavailable']}")
    return [("fairness: median behind ≤ 1.5× alone", statistics.median(b) <= 1.5 * statistics.median(a)),
            ("fairness: max behind ≤ 2× max alone", b[-1] <= 2 * a[-1]),
            ("large tenant at ≥ 90% of its quota", rate >= 0.9 * quota.per_second),
            ("fewer than 1% of calls answered 429", throttled < 0.01)]


def limit(base, args) -> list[tuple[str, bool]]:
    quota = Quota.parse(args.limit_quota)
    names = [f"mid-{i:02d}" for i in range(50)]
    tenants = {"warm-up": 1, **{t: 5000 for t in names}}
    results = {}
    print(f"\n== 2. close to the limit: 50 tenants of 5,000 users together, quota {quota} per tenant "
          f"(sum {50 * quota.per_second:,.0f} calls/s)")
    for label, q in (("no quota (this machine's bound)", Quota(10_000_000, 1)), (f"quota {quota}", quota)):
        with pipeline(base, q, tenants) as (settings, url, view), UpgradeRequestPublisher(settings) as publisher:
            warm_up(settings, view, publisher)
            sent = {f"ord-{t}-1": time.monotonic() for t in names}
            for t in names:
                publisher.publish(request_for(t, 5000, 1))
            publisher.flush()
            began = time.monotonic()
            follow(view, sent, 1800)
            print(f"  (request → all completed: {time.monotonic() - began:.1f}s)")
            served = stats(url)
            zeros = [r for r in read_topic(settings, settings.topic(Topic.LICENSE_BATCHES))
                     if isinstance(r.value, dict) and r.value.get("batch_no") == 0
                     and r.value.get("tenant_id", "").startswith("mid-")]
            firsts = sorted(r.timestamp for r in zeros)
            partition_of = {r.value["tenant_id"]: r.partition for r in zeros}
            print(f"  (intake planned the 50 upgrades' first batches within {(firsts[-1] - firsts[0]) / 1000:.1f}s "
                  f"of each other)")
        mid = {t: v for t, v in served["tenants"].items() if t.startswith("mid-")}
        calls = sum(v["calls"] for v in mid.values())
        # from the first call the service let through to the last (its own clock)
        seconds = max(v["last_at"] for v in mid.values()) - min(v["first_at"] for v in mid.values())
        results[label] = (calls / seconds, served)
        print(f"{label:<34} {calls:,} calls in {seconds:.1f}s = {calls / seconds:,.0f} calls/s "
              f"({calls * 20 / seconds:,.0f} users/s); 429: {served['throttled']}")
        start = min(v["first_at"] for v in mid.values())
        began_at = sorted(v["first_at"] - start for v in mid.values())
        own = sorted(v["calls"] / (v["last_at"] - v["first_at"]) for v in mid.values() if v["last_at"] > v["first_at"])
        if os.environ.get("BENCH_DEBUG"):
            for t, v in sorted(mid.items(), key=lambda x: x[1]["calls"] / max(1e-9, x[1]["last_at"] - x[1]["first_at"]))[:12]:
                print("   ", t, "partition", partition_of.get(t), f"{v['calls'] / (v['last_at'] - v['first_at']):.2f}/s",
                      f"longest gap {v['longest_gap_s']:.2f}s, gaps over 1 s {v['gaps_over_1s']:.1f}s",
                      "tenants on that partition:", sum(1 for p in partition_of.values() if p == partition_of.get(t)))
        print(f"{'':<34} each tenant's first call after the first tenant's: median {statistics.median(began_at):.1f}s, "
              f"max {began_at[-1]:.1f}s; each tenant's own rate: min {own[0]:.2f}, median {statistics.median(own):.2f}, "
              f"max {own[-1]:.2f} calls/s")
    bound = results["no quota (this machine's bound)"][0]
    rate, served = results[f"quota {quota}"]
    goal = min(50 * quota.per_second, bound)
    throttled = served["throttled"] / max(1, served["throttled"] + served["calls"])
    print(f"reached {rate:,.0f} calls/s of min(sum of quotas {50 * quota.per_second:,.0f}, bound {bound:,.0f}) "
          f"= {rate / goal:.0%}; 429: {throttled:.2%}")
    return [("50 tenants at ≥ 90% of the sum of their quotas (or of the CPU bound)", rate >= 0.9 * goal),
            ("50 tenants: fewer than 1% of calls answered 429", throttled < 0.01)]


def steady_load(publisher, view, names: list[str], rate: float) -> tuple[dict[str, float], dict[str, float]]:
    """`rate` requests a second, one per name, followed to `completed`: (sent at, took) per upgrade id."""
    sent: dict[str, float] = {}

    def steady() -> None:
        began = time.monotonic()
        for i, name in enumerate(names):
            time.sleep(max(0.0, began + i / rate - time.monotonic()))
            sent[f"ord-{name}-1"] = time.monotonic()
            publisher.publish(request_for(name, 10, 1))
            if i % 10 == 9:
                publisher.flush()
        publisher.flush()

    sender = threading.Thread(target=steady)
    sender.start()
    each = follow(view, sent, 600, expected=len(names))
    sender.join()
    return sent, each


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[max(0, int(len(sorted_values) * share) - 1)]


def latency(base, args) -> list[tuple[str, bool]]:
    quota = Quota.parse(args.quota)
    count = int(args.rate * args.latency_seconds)
    names = [f"steady-{i:05d}" for i in range(count)]
    warming = [f"warming-{i:05d}" for i in range(int(args.rate * args.warm_seconds))]
    print(f"\n== 3. latency: {args.rate:g} requests/s of 10-user tenants for {args.latency_seconds:g}s ({count:,}), "
          f"after {args.warm_seconds:g}s of the same load to warm up")
    with pipeline(base, quota, {"warm-up": 1, **{t: 10 for t in warming + names}}) as (settings, url, view), \
            UpgradeRequestPublisher(settings) as publisher:
        warm_up(settings, view, publisher)
        if warming:
            # A broker that has just started spends its first seconds of load compiling its
            # hot paths (the JVM's JIT); a deployment's broker has long done so.
            _, first = steady_load(publisher, view, warming, args.rate)
            w = sorted(first.values())
            print(f"  warming up (not counted): p50 {percentile(w, 0.5):.2f}s, p99 {percentile(w, 0.99):.2f}s, "
                  f"max {w[-1]:.2f}s")
        before = stats(url)["requests"]
        sent, each = steady_load(publisher, view, names, args.rate)
        took = sorted(each.values())
        steps = stages(settings, set(sent))
        served = {route: n - before.get(route, 0) for route, n in stats(url)["requests"].items()}
    began = min(sent.values())
    print("by when it was sent (p50 / max):  " + "  ".join(
        f"{int(t0)}-{int(t0) + 5}s {statistics.median(w):.1f}/{max(w):.1f}"
        for t0 in range(0, int(args.latency_seconds), 5)
        if (w := [each[u] for u, at in sent.items() if t0 <= at - began < t0 + 5])))
    p50, p99 = percentile(took, 0.5), percentile(took, 0.99)
    print(f"request → completed: p50 {p50:.2f}s, p99 {p99:.2f}s, max {took[-1]:.2f}s")
    print(f"licence service requests per upgrade: {sum(served.values()) / count:.2f} ("
          + ", ".join(f"{route} {n / count:.2f}" for route, n in sorted(served.items(), key=lambda x: -x[1]) if n)
          + ")")
    print("where the time goes (the records' own timestamps: each step is the step before it committing, "
          "then this one reading and handling it):")
    for step, seconds in steps.items():
        seconds.sort()
        print(f"  {step:<44} p50 {percentile(seconds, 0.5):.2f}s, p99 {percentile(seconds, 0.99):.2f}s")
    return [("steady 100/s: p99 ≤ 3 s", p99 <= 3.0)]


def stages(settings, upgrade_ids: set[str]) -> dict[str, list[float]]:
    """Per upgrade, the seconds between the records each step wrote (their CreateTime):
    the request, intake's batch, migration's completion, settlement's `completed`."""
    at: dict[str, dict[str, int]] = {u: {} for u in upgrade_ids}
    wanted = ((Topic.UPGRADE_REQUESTED, "requested"), (Topic.LICENSE_BATCHES, "batch"),
              (Topic.LICENSE_BATCH_COMPLETED, "migrated"), (Topic.UPGRADE_STATUS, "completed"))
    for topic, name in wanted:
        for record in read_topic(settings, settings.topic(topic)):
            value = record.value if isinstance(record.value, dict) else {}
            if name == "completed" and value.get("status") != "completed":
                continue
            times = at.get(value.get("upgrade_id") or value.get("order_id") or "")
            if times is not None:
                times.setdefault(name, record.timestamp)
    steps: dict[str, list[float]] = {"request → intake's batch": [], "batch → migrated (worker's completion)": [],
                                     "completion → settled (completed status)": []}
    for times in at.values():
        if len(times) == 4:
            for step, (a, b) in zip(steps, (("requested", "batch"), ("batch", "migrated"), ("migrated", "completed"))):
                steps[step].append((times[b] - times[a]) / 1000)
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("all", "fairness", "limit", "latency"), default="all")
    parser.add_argument("--quota", default="1000/10", help="per-tenant quota of scenarios 1 and 3 (default 1000/10)")
    parser.add_argument("--limit-quota", default="50/10", help="per-tenant quota of scenario 2 (default 50/10)")
    parser.add_argument("--large-users", type=int, default=100_000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--warm-seconds", type=float, default=15.0,
                        help="seconds of the same load first, not counted (default 15; 0: none)")
    args = parser.parse_args()
    verdicts: list[tuple[str, bool]] = []
    with bench_settings() as base:
        if args.scenario in ("all", "fairness"):
            verdicts += fairness(base, args)
        if args.scenario in ("all", "limit"):
            verdicts += limit(base, args)
        if args.scenario in ("all", "latency"):
            verdicts += latency(base, args)
    print()
    for goal, met in verdicts:
        print(f"{'met    ' if met else 'NOT MET'}  {goal}")
    return 0 if all(met for _, met in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())

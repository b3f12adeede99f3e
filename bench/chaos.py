"""The chaos run (issue 12): the whole pipeline under repeated crashes and a broker restart.

Modelled on Apache Kafka's own transactions system test (many messages, hard and clean
kills, then: zero duplicates, zero loss). In one run, on a broker of its own:

  * `--upgrades` (2,000) upgrade requests, two of them for tenants of `--large-users`
    (100,000) users, are published in waves while the pipeline runs as child processes:
    intake, two migration workers, settlement and the archiver (`python -m cli run …`);
  * each role is SIGKILLed `--kills` (3) times and stopped with SIGTERM as often, every
    time while work is in flight, and restarted; the broker is stopped and started once
    (with `--nodes 3`, a local three-node cluster replicating to 3 with
    `min.insync.replicas` 2: one node SIGKILLed mid-run and brought back);
  * then, from `read_committed` readers, the licence directory and the lake:
      - every upgrade completed;
      - exactly one `billing.switch` per upgrade and at most one `credit.issued`, whose
        amount is the contract's (`planshift.domain.money`);
      - no event id twice on any output topic;
      - every upgrade's statuses only move forward;
      - every user holds the target licence, not the source one, and keeps the licences of
        other subscriptions;
      - the lake holds every archived event once;
      - with `--nodes 3`: no consumer's loop stayed stuck longer than its session timeout
        once the cluster had fenced the killed node (each round longer than the session
        timeout is logged; until the node is fenced its partitions have no leader and no
        one can commit). Those rounds are counted and printed in both modes: on one broker,
        while it restarts, every commit waits for it.

It prints its counts and wall time, and exits 1 if an invariant fails. `--runs N` runs it N
times in a row (a fresh broker each time).

    python bench/chaos.py [--runs 1] [--nodes 1|3] [--upgrades 2000] [--large-users 100000] [--kills 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from planshift.contract import Status, Topic  # noqa: E402
from planshift.domain.lifecycle import is_forward  # noqa: E402
from planshift.domain.money import subscription_credit  # noqa: E402
from planshift.events import encode_json, encode_key, event_headers, with_envelope  # noqa: E402
from planshift.kafka import clients  # noqa: E402
from planshift.kafka.reader import read_topic  # noqa: E402
from planshift.kafka.topics import create_topics  # noqa: E402
from planshift.ops.broker import LocalBroker, free_port  # noqa: E402
from planshift.ops.cluster import LocalCluster  # noqa: E402
from planshift.settings import Settings  # noqa: E402
from planshift.storage.directory import Licence, SqliteDirectory  # noqa: E402
from planshift.storage.lake import ARCHIVED_TOPICS, Lake  # noqa: E402
from producers.samples import upgrade_request  # noqa: E402

ROLES = [("intake", "0"), ("migrate", "0"), ("migrate", "1"), ("settle", "0"), ("archive", "0")]
OUTPUTS = (Topic.UPGRADE_STATUS, Topic.LICENSE_BATCHES, Topic.LICENSE_BATCH_COMPLETED, Topic.BILLING_SWITCH,
           Topic.CREDIT_ISSUED, Topic.UPGRADE_ENDED, Topic.CREDIT_CHECK_REQUESTED)
SMALL_USERS = 10
SESSION_TIMEOUT_S = 15.0  # the runtime's default session.timeout.ms


class Role:
    """One consumer process, restarted after every kill."""

    def __init__(self, settings: Settings, name: str, instance: str, logs: Path):
        self.settings, self.name, self.instance = settings, name, instance
        self.log = open(logs / f"{name}-{instance}.log", "ab")
        self.process: subprocess.Popen | None = None
        self.kills = self.stops = self.exits = 0

    def start(self) -> None:
        env = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
               "PLANSHIFT_TOPIC_PREFIX": self.settings.topic_prefix, "PLANSHIFT_DATA_DIR": str(self.settings.data_dir),
               "PLANSHIFT_REPLICATION_FACTOR": str(self.settings.replication_factor), "PLANSHIFT_LOG_LEVEL": "WARNING"}
        argv = [sys.executable, "-m", "cli", "run", self.name, "--instance", self.instance]
        if self.name == "archive":
            argv += ["--flush-interval-s", "1"]
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log, cwd=ROOT)

    def kill(self, clean: bool) -> float:
        """SIGKILL (or SIGTERM, then wait) and start again; the seconds it took to stop."""
        began = time.monotonic()
        if clean:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"{self.name}-{self.instance} did not stop within 90 s of SIGTERM") from None
            self.stops += 1
        else:
            self.process.kill()
            self.process.wait()
            self.kills += 1
        stopped = time.monotonic() - began
        self.start()
        return stopped

    def supervise(self) -> None:
        """Start it again if it exited on its own (as `planshift run all` or a container's
        restart policy would: a consumer started while the broker is down exits at once)."""
        if self.process.poll() is not None:
            self.exits += 1
            self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def seed(settings: Settings, upgrades: int, large_users: int) -> list[dict]:
    """The tenants, their users (and other subscriptions' users), and their requests."""
    directory = SqliteDirectory.for_settings(settings)
    today = datetime.now(timezone.utc).date()  # the credit is for the days left of this month
    requests, licences = [], []
    for n in range(upgrades):
        tenant = f"t{n:05d}"
        users = large_users if n < 2 else SMALL_USERS
        request = upgrade_request(tenant, f"ord-{tenant}", today=today, licenses=users,
                                  billed_minor=1250 * users, new_total_cost_minor=min(2200 * users, 990_000))
        source = request["source_subscription_id"]
        licences += [Licence(tenant, f"u{i:06d}", source, "M365_BUSINESS_STANDARD", ()) for i in range(users)]
        # Users on another subscription of the tenant keep theirs.
        licences += [Licence(tenant, f"other-{i}", f"{tenant}-sub-visio", "VISIO_PLAN_2", ()) for i in range(2)]
        requests.append(request)
    directory.put(licences)
    directory.close()
    return requests


def publish(settings: Settings, requests: list[dict]) -> None:
    producer = clients.producer(settings)
    topic, headers = settings.topic(Topic.UPGRADE_REQUESTED), event_headers(Topic.UPGRADE_REQUESTED)
    for request in requests:
        event = with_envelope(request, Topic.UPGRADE_REQUESTED)
        producer.send(topic, key=encode_key(event["tenant_id"]), value=encode_json(event), headers=headers)
    producer.flush(60)
    producer.close()


def completed(settings: Settings) -> set[str]:
    try:
        return {r.value["upgrade_id"] for r in read_topic(settings, settings.topic(Topic.UPGRADE_STATUS), 60)
                if isinstance(r.value, dict) and r.value.get("status") == Status.COMPLETED}
    except Exception:  # noqa: BLE001 - the broker may be restarting right now
        return set()


def slow_rounds(logs: Path) -> list[tuple[float, float]]:
    """(when it ended, seconds) of each round of a consumer's loop that took longer than
    its session timeout (the processor logs each one: meanwhile its partitions waited)."""
    from datetime import datetime

    rounds = []
    for path in logs.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if "longer than the session timeout" in line:
                record = json.loads(line)
                ended = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
                rounds.append((ended, float(record["seconds"])))
    return rounds


def check(settings: Settings, requests: list[dict]) -> dict[str, int]:
    """Every invariant; returns the counts, raises AssertionError naming the first that fails."""
    by_id = {r["upgrade_id"]: r for r in requests}
    counts: dict[str, int] = {}
    events = {t: [r for r in read_topic(settings, settings.topic(t), 120)] for t in OUTPUTS}
    for topic, records in events.items():
        ids = Counter(r.value["event_id"] for r in records if isinstance(r.value, dict))
        twice = {i: n for i, n in ids.items() if n > 1}
        assert not twice, f"{topic}: event ids seen more than once: {list(twice.items())[:5]}"
        counts[f"{topic} events"] = len(records)
    statuses = defaultdict(list)
    for r in events[Topic.UPGRADE_STATUS]:
        statuses[r.value["upgrade_id"]].append(r.value["status"])
    not_done = [u for u in by_id if not statuses.get(u) or statuses[u][-1] != Status.COMPLETED]
    assert not not_done, f"{len(not_done)} upgrades did not complete, e.g. {not_done[:5]}: {statuses.get(not_done[0])}"
    backwards = [u for u, history in statuses.items() if not is_forward(history)]
    assert not backwards, f"statuses moved backwards: {backwards[:3]} {statuses[backwards[0]]}"
    switches = Counter(r.value["upgrade_id"] for r in events[Topic.BILLING_SWITCH])
    assert set(switches) == set(by_id) and set(switches.values()) == {1}, "not exactly one billing.switch each"
    effective = {r.value["upgrade_id"]: date.fromisoformat(r.value["effective_date"])
                 for r in events[Topic.BILLING_SWITCH]}
    credits = Counter(r.value["upgrade_id"] for r in events[Topic.CREDIT_ISSUED])
    assert all(n == 1 for n in credits.values()), "an upgrade got more than one credit"
    for r in events[Topic.CREDIT_ISSUED]:
        request = by_id[r.value["upgrade_id"]]
        owed = subscription_credit(request["tenant"]["subscriptions"][0], effective[r.value["upgrade_id"]],
                                   request["new_total_cost_minor"])
        assert r.value["amount_minor"] == owed.amount_minor, f"credit {r.value['credit_id']}: " \
            f"{r.value['amount_minor']} issued, {owed.amount_minor} owed"
    counts["credits"] = len(credits)
    directory = SqliteDirectory.for_settings(settings)
    try:
        for upgrade_id, request in by_id.items():
            tenant = request["tenant_id"]
            users = request["licenses"]
            assert directory.count_holders(tenant, request["source_subscription_id"]) == 0, f"{tenant}: source left"
            assert directory.count_holders(tenant, request["target_subscription_id"]) == users, \
                f"{tenant}: {directory.count_holders(tenant, request['target_subscription_id'])} of {users} moved"
            assert directory.count_holders(tenant, f"{tenant}-sub-visio") == 2, f"{tenant}: other licences lost"
        counts["users moved"] = sum(r["licenses"] for r in requests)
    finally:
        directory.close()
    lake = Lake.for_settings(settings)
    for topic in ARCHIVED_TOPICS:
        expected = {(r.partition, r.offset) for r in read_topic(settings, settings.topic(topic), 120)
                    if isinstance(r.value, dict)}
        seen = Counter()
        for path in lake.files(topic):
            table = pq.read_table(path, columns=["partition", "offset"])
            seen.update(zip(table["partition"].to_pylist(), table["offset"].to_pylist()))
        twice = [k for k, n in seen.items() if n > 1]
        assert not twice, f"lake {topic}: {len(twice)} events twice"
        assert set(seen) == expected, f"lake {topic}: {len(expected - set(seen))} events missing"
        counts[f"lake {topic}"] = len(seen)
    return counts


def archived_all(settings: Settings) -> bool:
    """Whether the lake holds as many rows of each archived topic as the topic has events."""
    lake = Lake.for_settings(settings)
    try:
        for topic in ARCHIVED_TOPICS:
            wanted = sum(1 for r in read_topic(settings, settings.topic(topic), 60) if isinstance(r.value, dict))
            if sum(pq.read_metadata(path).num_rows for path in lake.files(topic)) < wanted:
                return False
        return True
    except Exception:  # noqa: BLE001 - the broker may be restarting right now
        return False


def one_run(args, run_no: int) -> bool:
    work = Path(tempfile.mkdtemp(prefix="planshift-chaos-"))
    base = Settings.from_env({k: v for k, v in os.environ.items() if k in ("PLANSHIFT_KAFKA_CACHE",)})
    settings = base.with_(bootstrap_servers=f"127.0.0.1:{free_port()}", data_dir=work,
                          topic_prefix=f"chaos-{uuid.uuid4().hex[:6]}.")
    if args.nodes > 1:
        cluster = LocalCluster(settings, args.nodes)
        cluster.start(timeout=180)
        settings = settings.with_(bootstrap_servers=cluster.bootstrap_servers, replication_factor=min(3, args.nodes))
        broker = cluster
    else:
        broker = LocalBroker(settings)
        broker.start()
    create_topics(settings)
    requests = seed(settings, args.upgrades, args.large_users)
    rng = random.Random(args.seed + run_no)
    logs = work / "logs"
    logs.mkdir()
    roles = [Role(settings, name, instance, logs) for name, instance in ROLES]
    began = time.monotonic()
    for role in roles:
        role.start()
    waves = [requests[i::args.waves] for i in range(args.waves)]
    # The chaos: every role killed and stopped `kills` times, in a shuffled order.
    targets = {name: [r for r in roles if r.name == name] for name, _ in ROLES}
    events = [(name, clean) for name in targets for clean in (False, True) for _ in range(args.kills)]
    rng.shuffle(events)
    broker_restart_at = len(events) // 2
    slowest_stop = 0.0
    outage = [0.0, 0.0]  # when a node was killed, and when the cluster had fenced it (wall clock)
    try:
        def pause(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for r in roles:
                    r.supervise()
                time.sleep(0.5)

        for i, (name, clean) in enumerate(events):
            if waves:
                publish(settings, waves.pop(0))
            pause(rng.uniform(1.0, args.interval))
            role = rng.choice(targets[name])
            slowest_stop = max(slowest_stop, role.kill(clean))
            if i == broker_restart_at:
                if args.nodes > 1:
                    victim = rng.randint(1, args.nodes)
                    outage[0] = time.time()
                    broker.kill_node(victim)  # a crash: SIGKILL; returns once the quorum has fenced it
                    outage[1] = time.time()
                    pause(5)
                    broker.start_node(victim, timeout=180)
                else:
                    broker.stop()
                    time.sleep(2)
                    broker.start()
        while waves:
            publish(settings, waves.pop(0))
        deadline = time.monotonic() + args.timeout
        while len(completed(settings)) < len(requests) or not archived_all(settings):
            if time.monotonic() > deadline:
                break
            pause(3)
        wall = time.monotonic() - began
        try:
            counts = check(settings, requests)
        except AssertionError as exc:
            print(f"run {run_no}: FAILED after {wall:.0f}s: {exc} (logs in {logs}; consumers that exited on "
                  f"their own: {sum(r.exits for r in roles)})", flush=True)
            return False
        slow = slow_rounds(logs)
        # While the killed node is not yet fenced its partitions have no leader and nobody
        # can commit; what a consumer may not do is stay stuck once the cluster serves again.
        beyond = [end - max(end - seconds, outage[1]) if end - seconds < outage[1] else seconds
                  for end, seconds in slow if not (outage[0] and end < outage[0])] if args.nodes > 1 else []
        beyond = [b for b in beyond if b > SESSION_TIMEOUT_S]
        if beyond:
            print(f"run {run_no}: FAILED after {wall:.0f}s: {len(beyond)} rounds of a consumer's loop stayed stuck "
                  f"longer than its session timeout after the cluster had fenced the killed node (longest "
                  f"{max(beyond):.1f}s; logs in {logs})", flush=True)
            return False
        kills = sum(r.kills for r in roles)
        stops = sum(r.stops for r in roles)
        exits = sum(r.exits for r in roles)
        restart = "1 broker restart" if args.nodes == 1 else f"1 of {args.nodes} brokers SIGKILLed and brought back"
        print(f"run {run_no}: passed in {wall:.0f}s — {len(requests)} upgrades, {counts['users moved']:,} users "
              f"moved, {counts['credits']} credits; {kills} SIGKILLs and {stops} SIGTERMs (slowest stop "
              f"{slowest_stop:.1f}s), {restart}, {exits} restarts of a consumer that exited on its own; "
              f"no duplicate event id, nothing lost; rounds of a loop longer than the session timeout: "
              f"{len(slow)}{f' (longest {max(s for _, s in slow):.1f}s)' if slow else ''}"
              + (f", node fenced {outage[1] - outage[0]:.1f}s after its kill, none stuck that long after it"
                 if args.nodes > 1 else "") + "; "
              + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
        return True
    finally:
        for role in roles:
            role.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs in a row (default 1)")
    parser.add_argument("--nodes", type=int, default=1, help="brokers: 1, or a local cluster of 3")
    parser.add_argument("--upgrades", type=int, default=2000)
    parser.add_argument("--large-users", type=int, default=100_000, help="users of each of the two large tenants")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs, and as many SIGTERMs, per role")
    parser.add_argument("--waves", type=int, default=10, help="the requests are published in this many waves")
    parser.add_argument("--interval", type=float, default=4.0, help="longest pause between two chaos events (s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for everything to complete")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    passed = 0
    for run_no in range(1, args.runs + 1):
        if not one_run(args, run_no):
            break
        passed += 1
    print(f"\n{passed} of {args.runs} runs passed in a row")
    sys.exit(0 if passed == args.runs else 1)


if __name__ == "__main__":
    main()

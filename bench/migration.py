"""Licence migration end to end: the 1M-user tenant, and what parallel partitions buy.

Three figures, one run, on a broker the benchmark starts:

1. embedded: a tenant of `--users` (default 1,000,000) users on the embedded SQLite
   directory, from `upgrade.requested` published to `upgrade.status` completed, with
   intake, settlement and `--instances` migration workers as separate processes, as in
   production. Reports users per second. Goal (issue 4): within 60 s.

2. remote: the same pipeline for `--remote-users` (default 100,000) users with the
   migration's directory behind `RemoteLicenceServiceModel`, an adapter that models a
   remote licence API: every call takes `--delay-ms` (20 ms) of network and service time
   and carries at most `--call-size` (20) users. Run with 1, 2, 4 and 8 migration
   instances. Reports users per second for each. Goal: 4 instances at least 3.5× faster
   than 1. The delay is this model's, kept here in the benchmark.

3. postgres (issue 16): the 1M-user tenant again with the directory on PostgreSQL
   (`PLANSHIFT_DIRECTORY_URL`, a server the benchmark starts: `LocalPostgres`), beside
   the SQLite time of the same run (goal: within 2×); then `--hosts-users` (300,000) users
   migrated by one worker "host" and by two (separate processes with separate data
   folders sharing the database; goal: two reach 1.7× one), in `--rounds` rounds of four
   runs (1, 2, 2, 1 hosts) on one set of topics, each run with a database of its own,
   after `--warm-broker-s` (60) seconds of transactions driven through the broker and
   `--warm-runs` runs, not counted (the broker's JIT compiler). The figure is the
   median of the rounds' ratios of migrating time (first batch → last completion). Every
   process of this benchmark shares this machine's CPUs, so it also prints the CPU each
   part used while the migration ran, and the bound that CPU sets for two hosts here.

    python bench/migration.py [--users 1000000] [--remote-users 100000]
                              [--scenario both|embedded|remote|postgres|hosts] [--hosts-users 300000]
                              [--rounds 3] [--warm-broker-s 60] [--warm-runs 6] [--warm-users 150000]
                              [--durable]

The clock starts when the request is published, after every process has joined its
consumer group and the migration workers' partitions are spread among them, and stops
when the completed status is visible to a read_committed reader.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import bench_settings, broker_pid, cpu_seconds, jit_seconds, wait_settled, warm_broker  # noqa: E402
from cli import tuning  # noqa: E402
from planshift.contract import Topic  # noqa: E402
from planshift.events import (
    encode_json,
    event_headers,
    with_envelope,  # noqa: E402
)
from planshift.kafka import clients  # noqa: E402
from planshift.kafka.reader import read_topic  # noqa: E402
from planshift.kafka.topics import create_topics  # noqa: E402
from planshift.ops.view import StatusView  # noqa: E402
from planshift.storage.directory import Licence, SqliteDirectory  # noqa: E402
from producers.samples import upgrade_request  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class RemoteLicenceServiceModel:
    """A model of a remote licence API in front of the embedded directory (benchmark only).

    Each call costs `delay_s` and carries at most `call_size` users, as a batched
    licence-assignment API would; a migration of n users makes ceil(n / call_size) calls.
    """

    def __init__(self, inner: SqliteDirectory, delay_s: float, call_size: int):
        self.inner, self.delay_s, self.call_size = inner, delay_s, call_size

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def migrate(self, tenant_id, upgrade_id, user_ids, *args, **kwargs):
        time.sleep(self.delay_s * max(1, math.ceil(len(user_ids) / self.call_size)))
        return self.inner.migrate(tenant_id, upgrade_id, user_ids, *args, **kwargs)


def worker(args) -> None:
    """One migration instance on the remote-service model (a child process of this benchmark)."""
    from consumers import migrate
    from planshift import logs
    from planshift.settings import Settings

    settings = Settings.from_env()
    logs.configure("WARNING")
    directory = RemoteLicenceServiceModel(SqliteDirectory.for_settings(settings), args.delay_ms / 1000, args.call_size)
    processor = migrate.processor(settings, instance=args.instance, directory=directory)
    processor.install_signal_handlers()
    processor.run()


def seed(settings, tenant: str, users: int) -> str:
    from planshift.storage.directory import open_directory

    source = f"{tenant}-sub-m365_business_standard"
    directory = open_directory(settings)
    directory.put(Licence(tenant, f"u{i:07d}", source, "M365_BUSINESS_STANDARD",
                          ("SHAREPOINT",) if i % 10 == 0 else ()) for i in range(users))
    directory.close()
    return source


def run_once(settings, tenant: str, users: int, instances: int, remote: tuple[float, int] | None,
             hosts: bool = False, cpu: dict | None = None, stages: dict | None = None) -> float:
    """Seconds from the request to `completed`, the clock started once every process has
    joined its group and the migration workers' partitions are spread among them. `hosts`:
    each migration worker has a data folder of its own (a host of its own, sharing only
    Kafka and the directory's database). `stages`, if given, receives the seconds of each
    stage (`migration_stages`); `cpu`, the CPU seconds each part of the pipeline and the
    whole machine used while the migration ran (first batch → last completion)."""
    env = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PLANSHIFT_TOPIC_PREFIX": settings.topic_prefix, "PLANSHIFT_DATA_DIR": str(settings.data_dir),
           "PLANSHIFT_LOG_LEVEL": "WARNING"}
    if settings.directory_url:
        env["PLANSHIFT_DIRECTORY_URL"] = settings.directory_url
    cli = [sys.executable, "-m", "cli", "run"]
    commands = [(cli + ["intake"], env), (cli + ["settle"], env)]
    for i in range(instances):
        own = env
        if hosts:
            folder = settings.data_dir / f"host-{i}"
            folder.mkdir(exist_ok=True)
            own = {**env, "PLANSHIFT_DATA_DIR": str(folder)}
        if remote is None:
            commands.append((cli + ["migrate", "--instance", str(i)], own))
        else:
            commands.append(([sys.executable, str(Path(__file__).resolve()), "worker", "--instance", str(i),
                              "--delay-ms", str(remote[0]), "--call-size", str(remote[1])], own))
    log = open(settings.data_dir / f"{settings.topic_prefix.strip('.')}.log", "ab")
    procs = [subprocess.Popen(c, env=e, stdout=log, stderr=log, cwd=ROOT) for c, e in commands]
    try:
        wait_settled(settings, {"planshift-migrate": instances, "planshift-intake": 1, "planshift-settle": 1})
        request = with_envelope(upgrade_request(tenant, f"ord-{tenant}", licenses=users), "upgrade.requested")
        timeline = CpuTimeline(role_pids(settings, procs)) if cpu is not None else None
        began, sent_ms = time.perf_counter(), time.time() * 1000
        with clients.producer(settings) as producer:
            producer.send(settings.topic(Topic.UPGRADE_REQUESTED), key=tenant.encode(),
                          value=encode_json(request),
                          headers=event_headers(Topic.UPGRADE_REQUESTED))
        final = wait_final(settings, request["upgrade_id"], began)
        elapsed = time.perf_counter() - began
        if final != "completed":
            raise RuntimeError(f"the upgrade ended {final}")
        if stages is not None or timeline is not None:
            found = migration_stages(settings, request["upgrade_id"], sent_ms, elapsed)
            if stages is not None:
                stages.update(found)
            if timeline is not None:
                began_ms = sent_ms + found["planning"] * 1000
                cpu.update(timeline.between(began_ms, began_ms + found["migrating"] * 1000))
        return elapsed
    finally:
        if timeline is not None:
            timeline.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_final(settings, upgrade_id: str, began: float, timeout: float = 900) -> str:
    """The upgrade's final status, followed by one reader as it comes (`StatusView`), not a
    new reader every tenth of a second, which cost the broker as much CPU as a worker."""
    view = StatusView(settings, dead_letters=False)
    try:
        while upgrade_id not in view.upgrades or not view.upgrades[upgrade_id].final:
            if time.perf_counter() - began > timeout:
                raise TimeoutError(f"the upgrade did not complete within {timeout / 60:.0f} minutes")
            view.poll(100)
        return view.upgrades[upgrade_id].status
    finally:
        view.close()


def migration_stages(settings, upgrade_id: str, sent_ms: float, elapsed: float) -> dict[str, float]:
    """Where an upgrade's time went, from its records' timestamps (one machine, one clock):
    planning (request → intake's first batch), migrating (first batch → last batch
    completed: the workers' part, the one more workers shorten), settling (→ completed)."""
    batches = [r.timestamp for r in read_topic(settings, settings.topic(Topic.LICENSE_BATCHES))
               if isinstance(r.value, dict) and r.value.get("upgrade_id") == upgrade_id]
    done = [r.timestamp for r in read_topic(settings, settings.topic(Topic.LICENSE_BATCH_COMPLETED))
            if isinstance(r.value, dict) and r.value.get("upgrade_id") == upgrade_id]
    planning = (min(batches) - sent_ms) / 1000
    migrating = (max(done) - min(batches)) / 1000
    return {"planning": planning, "migrating": migrating, "settling": elapsed - planning - migrating,
            "batches": len(batches), "released": (max(batches) - min(batches)) / 1000}


def role_pids(settings, procs) -> dict[str, list[int]]:
    """The processes of each part of the pipeline on this machine: intake, settlement, the
    migration workers, the broker and the database server (its connections among them)."""
    roles = {"intake": [procs[0].pid], "settle": [procs[1].pid], "workers": [p.pid for p in procs[2:]]}
    broker = broker_pid(settings)
    if broker is not None:
        roles["broker"] = [broker]
    database = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().split(" (", 1)[1].startswith("postgres)"):
                database.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    if database:
        roles["database"] = database
    return roles


class CpuTimeline:
    """The CPU seconds used so far by each part of the pipeline and by the whole machine
    (`machine`: every core's busy time, from /proc/stat), read every 100 ms in a thread of
    its own, so that the CPU of one stage can be told from the rest of the run."""

    INTERVAL_S = 0.1

    def __init__(self, roles: dict[str, list[int]]):
        self.roles = roles
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-timeline", daemon=True)
        self._thread.start()

    def _read(self) -> dict[str, float]:
        used = {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.roles.items()}
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        used["machine"] = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
        return used

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time() * 1000, self._read()))
            self._stop.wait(self.INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start_ms: float, end_ms: float) -> dict[str, float]:
        """CPU seconds of each part between the samples nearest `start_ms` and `end_ms`
        (within 100 ms of each), and `seconds`, the time between those samples."""
        first = min(self.samples, key=lambda s: abs(s[0] - start_ms))
        last = min(self.samples, key=lambda s: abs(s[0] - end_ms))
        used = {role: last[1][role] - first[1].get(role, 0.0) for role in last[1]}
        used["seconds"] = (last[0] - first[0]) / 1000
        return used


def postgres_figures(base, args, results: list[str]) -> None:
    from planshift.ops.postgres import LocalPostgres

    # The test suite's throw-away server (no fsync); --durable: PostgreSQL's own defaults, as
    # a deployment runs it, each commit flushed to disk (on this machine the flushes cost the
    # kernel CPU on the cores everything else shares).
    server = LocalPostgres(durable=args.durable).start()
    try:
        import psycopg

        def database(name: str) -> str:
            with psycopg.connect(server.url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            return server.url.rsplit("/", 1)[0] + f"/{name}"

        def drop(name: str) -> None:
            """A run's database, once it is over: the next run's tables and indexes get the
            server's shared buffers to themselves (with every run's kept, a run's moves cost
            the server a fifth more CPU by the sixth run)."""
            with psycopg.connect(server.url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

        times = {}
        for kind in (("sqlite", "postgres") if args.scenario == "postgres" else ()):
            settings = base.with_(topic_prefix=f"{base.topic_prefix}{kind}.",
                                  directory_url=database("giant") if kind == "postgres" else None)
            create_topics(settings)
            began = time.perf_counter()
            seed(settings, "giant", args.users)
            print(f"{kind}: seeded {args.users:,} users in {time.perf_counter() - began:.1f}s", flush=True)
            times[kind] = run_once(settings, "giant", args.users, args.instances, None)
            print(f"{kind} directory, {args.users:,} users, {args.instances} migration instances: "
                  f"{times[kind]:.1f}s, {args.users / times[kind]:,.0f} users/s", flush=True)
        if times:
            ratio = times["postgres"] / times["sqlite"]
            verdict = "met" if ratio <= 2 else "NOT met"
            results.append(f"PostgreSQL directory: {args.users:,} users in {times['postgres']:.1f}s, {ratio:.2f}× "
                           f"the SQLite time of {times['sqlite']:.1f}s (goal ≤ 2×: {verdict})")
        # Every hosts run is on one set of topics, as a deployment's hosts join and leave on the
        # same topics (with new topics for each run the broker's JIT compiler never quieted),
        # with a tenant and a database of its own, dropped once it is over.
        shared = base.with_(topic_prefix=f"{base.topic_prefix}hosts.")
        create_topics(shared)

        def hosts_run(tenant: str, users: int, hosts: int, **measures) -> tuple[float, float]:
            """Seconds from request to completed, and the CPU seconds the broker's JIT compiler
            used meanwhile."""
            settings = shared.with_(directory_url=database(tenant))
            seed(settings, tenant, users)
            compiled = jit_seconds(broker_pid(shared))
            try:
                elapsed = run_once(settings, tenant, users, hosts, None, hosts=True, **measures)
            finally:
                drop(tenant)
            return elapsed, jit_seconds(broker_pid(shared)) - compiled

        if args.warm_broker_s:
            warmed = warm_broker(shared, args.warm_broker_s)
            print(f"(warming the broker up, not counted: {warmed['transactions']:,} transactions in "
                  f"{args.warm_broker_s:.0f}s; the broker {warmed['broker']:.1f} CPU-s, its JIT compiler "
                  f"{warmed['compiler']:.1f})", flush=True)
        if args.warm_users:
            # The pipeline with one host and with two, by turns, not counted: a freshly started
            # broker's JIT compiler works through many runs (1.3–1.9 CPU-s of its compiler
            # threads in the first, 0.3–0.9 after six, a tenth of a run's CPU at first), where a
            # broker in service has long finished; and two hosts take paths through it (a group
            # of two, its rebalances) that one host does not.
            for n in range(args.warm_runs):
                hosts = 1 + n % 2
                elapsed, compiled = hosts_run(f"warm{n}", args.warm_users, hosts)
                print(f"(warming up, not counted: {hosts} host(s), {args.warm_users:,} users in {elapsed:.1f}s; "
                      f"the broker's JIT compiler {compiled:.2f} CPU-s)", flush=True)
        # One host and two, in rounds of four runs (1, 2, 2, 1): a fresh broker's JIT compiler
        # works on through many runs, and a shared machine's load drifts, so each round sets
        # runs either side of the same moment against each other.
        runs: dict[int, list[tuple[dict, dict]]] = {1: [], 2: []}
        ratios, bounds = [], []
        for n, hosts in enumerate([1, 2, 2, 1] * args.rounds):
            cpu, stages = {}, {}
            elapsed, compiled = hosts_run(f"hosts{n}", args.hosts_users, hosts, cpu=cpu, stages=stages)
            runs[hosts].append((stages, cpu))
            busy = cpu["seconds"] or stages["migrating"]
            print(f"PostgreSQL directory, {hosts} worker host(s), {args.hosts_users:,} users in "
                  f"{stages['batches']} batches: {elapsed:.1f}s request → completed: planning {stages['planning']:.1f}s, "
                  f"migrating {stages['migrating']:.1f}s ({args.hosts_users / stages['migrating']:,.0f} users/s), "
                  f"settling {stages['settling']:.1f}s; cores busy while migrating: the machine "
                  f"{cpu['machine'] / busy:.2f} of {os.cpu_count()} (" + ", ".join(
                      f"{role} {used / busy:.2f}" for role, used in sorted(cpu.items(), key=lambda kv: -kv[1])
                      if role not in ("machine", "seconds")) + f"); the broker's JIT compiler {compiled:.2f} CPU-s "
                  "in the run", flush=True)
            if n % 4 == 3:  # a round's end
                one = sum(s["migrating"] for s, _ in runs[1][-2:])
                two = sum(s["migrating"] for s, _ in runs[2][-2:])
                ratios.append(one / two)
                # What this machine allows: two hosts can at best halve one host's migration,
                # and cannot finish before the machine has done the CPU work theirs needed.
                work = sum(c["machine"] for _, c in runs[2][-2:])
                bounds.append(one / max(one / 2, work / os.cpu_count()))
                print(f"round {len(ratios)}: 2 hosts migrate {ratios[-1]:.2f}× as fast as one "
                      f"(this machine's bound {bounds[-1]:.2f}×)", flush=True)
        speedup = statistics.median(ratios)
        results.append(f"PostgreSQL directory: 2 worker hosts migrate {speedup:.2f}× as fast as one, the median of "
                       f"{len(ratios)} round(s) of 1, 2, 2, 1 hosts ({', '.join(f'{r:.2f}×' for r in ratios)}; goal "
                       f"≥ 1.7×: {'met' if speedup >= 1.7 else 'NOT met'}); this machine's bound, from the CPU the "
                       f"two-host migrations used on its {os.cpu_count()} cores: "
                       f"{', '.join(f'{b:.2f}×' for b in bounds)}")
    finally:
        server.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode")
    w = sub.add_parser("worker")
    w.add_argument("--instance", default="0")
    w.add_argument("--delay-ms", type=float, default=20)
    w.add_argument("--call-size", type=int, default=20)
    parser.add_argument("--scenario", choices=("both", "embedded", "remote", "postgres", "hosts"), default="both",
                        help="hosts: only the second figure of postgres (one and two worker hosts)")
    parser.add_argument("--hosts-users", type=int, default=300_000, help="users of the two-hosts figure")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 1, 2, 2, 1 worker hosts (hosts figure)")
    parser.add_argument("--warm-users", type=int, default=150_000, help="users of each warm-up run (0: none)")
    parser.add_argument("--warm-runs", type=int, default=6,
                        help="warm-up runs before the hosts figure, one host and two by turns (0: none)")
    parser.add_argument("--warm-broker-s", type=float, default=60,
                        help="seconds of transactions driven through the broker before the hosts figure's "
                             "warm-up runs (0: none)")
    parser.add_argument("--durable", action="store_true",
                        help="PostgreSQL with its own defaults (fsync, full-page writes), as deployed; default: "
                             "without them, as the tests run it")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=2, help="migration instances for the embedded figure")
    parser.add_argument("--remote-users", type=int, default=100_000)
    parser.add_argument("--remote-instances", default="1,2,4,8")
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--call-size", type=int, default=20)
    args = parser.parse_args()
    tuning.for_consumer()  # a process entry point, as `planshift run` is
    if args.mode == "worker":
        return worker(args)

    with bench_settings() as base:
        results = []
        if args.scenario in ("both", "embedded"):
            settings = base.with_(topic_prefix=f"{base.topic_prefix}embedded.")
            create_topics(settings)
            began = time.perf_counter()
            seed(settings, "giant", args.users)
            print(f"seeded {args.users} users in {time.perf_counter() - began:.1f}s", flush=True)
            elapsed = run_once(settings, "giant", args.users, args.instances, None)
            results.append(f"embedded directory, {args.users} users, {args.instances} migration instances: "
                           f"{elapsed:.1f}s, {args.users / elapsed:,.0f} users/s "
                           f"(goal ≤ 60 s: {'met' if elapsed <= 60 else 'NOT met'})")
            print(results[-1], flush=True)
        if args.scenario in ("postgres", "hosts"):
            postgres_figures(base, args, results)
        if args.scenario in ("both", "remote"):
            rates = {}
            for n in [int(x) for x in args.remote_instances.split(",")]:
                settings = base.with_(topic_prefix=f"{base.topic_prefix}remote{n}.")
                create_topics(settings)
                tenant = f"remote{n}"
                seed(settings, tenant, args.remote_users)
                elapsed = run_once(settings, tenant, args.remote_users, n, (args.delay_ms, args.call_size))
                rates[n] = args.remote_users / elapsed
                print(f"remote model ({args.delay_ms:.0f} ms per call of ≤{args.call_size} users), {n} instance(s): "
                      f"{elapsed:.1f}s, {rates[n]:,.0f} users/s", flush=True)
            if 1 in rates and 4 in rates:
                speedup = rates[4] / rates[1]
                results.append(f"remote model: 4 instances {speedup:.2f}× faster than 1 "
                               f"(goal ≥ 3.5×: {'met' if speedup >= 3.5 else 'NOT met'})")
        print("\n" + "\n".join(results))


if __name__ == "__main__":
    main()

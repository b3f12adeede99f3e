"""Licence migration end to end: the 1M-user tenant, and what parallel partitions buy.

Two figures, one run, on a broker the benchmark starts:

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
   folders sharing the database; goal: two reach 1.7× one). Every process of this
   benchmark shares this machine's CPUs, so it also prints the CPU the migration used,
   the bound any number of "hosts" on this machine can reach.

    python bench/migration.py [--users 1000000] [--remote-users 100000]
                              [--scenario both|embedded|remote|postgres|hosts] [--hosts-users 300000]

The clock starts when the request is published, after every process has joined its
consumer group, and stops when the completed status is visible to a read_committed reader.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import bench_settings, broker_pid, cpu_seconds  # noqa: E402
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


def group_members(settings, group: str) -> int:
    from kafka.errors import KafkaError

    admin = clients.admin(settings)
    try:
        described = admin.describe_groups([settings.topic(group)])
    except KafkaError:  # the group does not exist yet
        return 0
    finally:
        admin.close()
    group_info = described[0] if isinstance(described, list) else next(iter(described.values()))
    members = group_info.get("members") if isinstance(group_info, dict) else getattr(group_info, "members", [])
    state = group_info.get("group_state") if isinstance(group_info, dict) else getattr(group_info, "state", "")
    return len(members or []) if str(state).lower().endswith("stable") else 0


def run_once(settings, tenant: str, users: int, instances: int, remote: tuple[float, int] | None,
             hosts: bool = False, cpu: dict | None = None, stages: dict | None = None) -> float:
    """Seconds from the request to `completed`. `hosts`: each migration worker has a data
    folder of its own (a host of its own, sharing only Kafka and the directory's
    database). `cpu`, if given, receives the CPU seconds the migration workers used;
    `stages`, the seconds of each stage (`migration_stages`)."""
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
        deadline = time.monotonic() + 120
        while group_members(settings, "planshift-migrate") < instances or \
                group_members(settings, "planshift-intake") < 1 or group_members(settings, "planshift-settle") < 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the consumers did not join their groups")
            time.sleep(0.2)
        request = with_envelope(upgrade_request(tenant, f"ord-{tenant}", licenses=users), "upgrade.requested")
        before = cpu_by_role(settings, procs)
        began, sent_ms = time.perf_counter(), time.time() * 1000
        with clients.producer(settings) as producer:
            producer.send(settings.topic(Topic.UPGRADE_REQUESTED), key=tenant.encode(),
                          value=encode_json(request),
                          headers=event_headers(Topic.UPGRADE_REQUESTED))
        final = wait_final(settings, request["upgrade_id"], began)
        elapsed = time.perf_counter() - began
        if final != "completed":
            raise RuntimeError(f"the upgrade ended {final}")
        if cpu is not None:
            cpu.update({role: used - before.get(role, 0.0) for role, used in cpu_by_role(settings, procs).items()})
        if stages is not None:
            stages.update(migration_stages(settings, request["upgrade_id"], sent_ms, elapsed))
        return elapsed
    finally:
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


def cpu_by_role(settings, procs) -> dict[str, float]:
    """CPU seconds used so far by each part of the pipeline on this machine, and by all of it
    (`machine`: every core's busy time, from /proc/stat)."""
    roles = {"intake": cpu_seconds(procs[0].pid), "settle": cpu_seconds(procs[1].pid),
             "workers": sum(cpu_seconds(p.pid) for p in procs[2:])}
    broker = broker_pid(settings)
    if broker is not None:
        roles["broker"] = cpu_seconds(broker)
    database = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().split(" (", 1)[1].startswith("postgres)"):
                database += cpu_seconds(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    roles["database"] = database
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    roles["machine"] = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return roles


def postgres_figures(base, args, results: list[str]) -> None:
    from planshift.ops.postgres import LocalPostgres

    server = LocalPostgres().start()
    try:
        import psycopg

        def database(name: str) -> str:
            with psycopg.connect(server.url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            return server.url.rsplit("/", 1)[0] + f"/{name}"

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
        if args.warm_users:
            # The same pipeline once first, not counted: a freshly started broker spends much
            # of its first minute's CPU in the JIT compiler, which would fall on the first run.
            settings = base.with_(topic_prefix=f"{base.topic_prefix}warm.", directory_url=database("warm"))
            create_topics(settings)
            seed(settings, "warm", args.warm_users)
            elapsed = run_once(settings, "warm", args.warm_users, 1, None, hosts=True)
            print(f"(warming up, not counted: {args.warm_users:,} users in {elapsed:.1f}s)", flush=True)
        rates, ends, machine = {}, {}, {}
        for hosts in (1, 2):
            settings = base.with_(topic_prefix=f"{base.topic_prefix}hosts{hosts}.",
                                  directory_url=database(f"hosts{hosts}"))
            create_topics(settings)
            tenant = f"hosts{hosts}"
            seed(settings, tenant, args.hosts_users)
            cpu, stages = {}, {}
            elapsed = run_once(settings, tenant, args.hosts_users, hosts, None, hosts=True, cpu=cpu, stages=stages)
            rates[hosts] = args.hosts_users / stages["migrating"]
            ends[hosts] = args.hosts_users / elapsed
            machine[hosts] = cpu["machine"] * stages["migrating"] / elapsed  # (about: its share of the run)
            print(f"PostgreSQL directory, {hosts} worker host(s), {args.hosts_users:,} users in "
                  f"{stages['batches']} batches: {elapsed:.1f}s request → completed ({ends[hosts]:,.0f} users/s): "
                  f"planning {stages['planning']:.1f}s (the last batch {stages['released']:.1f}s after the first), "
                  f"migrating {stages['migrating']:.1f}s "
                  f"({rates[hosts]:,.0f} users/s), settling {stages['settling']:.1f}s; "
                  f"CPU-s used: " + ", ".join(f"{role} {used:.1f}" for role, used in cpu.items() if role != "machine")
                  + f"; the machine {cpu['machine']:.1f} of {elapsed * os.cpu_count():.1f} "
                  f"({cpu['machine'] / elapsed:.2f} of its {os.cpu_count()} cores)", flush=True)
        speedup = rates[2] / rates[1]
        # What this machine allows: two hosts can at best halve one host's migration, and
        # cannot finish before the machine has done the CPU work the two-host run needed.
        one = args.hosts_users / rates[1]
        bound = one / max(one / 2, machine[2] / os.cpu_count())
        results.append(f"PostgreSQL directory: this machine's bound for 2 hosts: {bound:.2f}× (one host's "
                       f"{one:.1f}s of migration against the {machine[2]:.1f} CPU-s the two-host migration used, "
                       f"on {os.cpu_count()} cores)")
        results.append(f"PostgreSQL directory: 2 worker hosts migrate {speedup:.2f}× as fast as one (goal ≥ 1.7×: "
                       f"{'met' if speedup >= 1.7 else 'NOT met'}); request → completed {ends[2] / ends[1]:.2f}× "
                       f"(planning and settling are one intake and one settlement either way); this machine has "
                       f"{os.cpu_count()} cores for the broker, the database, intake, settlement and the workers")
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
    parser.add_argument("--warm-users", type=int, default=60_000,
                        help="users migrated first, not counted, before the hosts figure (0: none)")
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

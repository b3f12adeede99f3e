"""`planshift demo`: a realistic day of upgrades, relative to today, on the embedded defaults.

Start the local broker, create the topics, fill the embedded licence directory with the
day's tenants and users (`producers/day.py`: a few hundred tenants, one of 200,000 users,
every blocker of the article), preview every request the way an order system would before
checkout, publish them, answer the credit checks as a credit system would (approve most,
decline some, leave one unanswered until it expires), and run intake, two migration
workers, settlement, a billing system that bills in advance and makes a few mistakes on
purpose, and the archiver until everything has ended and been invoiced. Then finance's
reconciliation runs as of a day after every credit is due, and the demo prints what
happened: upgrades by outcome, reason codes, credits per currency, dead letters, findings
by check, and where the reports and the chart are.

Running it again publishes the same day again: intake recognises every upgrade id and
starts nothing twice, and the directory is not seeded again (so nobody is put back on a
plan they left).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from planshift.contract import Status, Topic
from planshift.events import encode_json, encode_key, event, event_headers, with_envelope
from planshift.settings import Settings

# The simulated billing system's mistakes, each on about this share of the upgrades
# (chosen per upgrade by a hash of the seed: the same upgrades every run).
DEMO_FAULTS = {"late-credit": 0.04, "overlap": 0.03, "wrong-amount": 0.03, "missing-credit": 0.02,
               "duplicate-credit": 0.02, "new-billing-gap": 0.02, "wrong-currency": 0.01,
               "redelivered-invoice": 0.05, "split-credit": 0.05}
DEMO_SEED = "demo-7"
SMALL = {"tenants": 30, "large_users": 2_000}


def register(sub) -> None:
    demo = sub.add_parser(
        "demo", help="a realistic day of upgrades, end to end, on a local broker",
        description="Generates a day of upgrade requests relative to --date (seeded: a rerun from a clean state "
                    "gives the same results), runs the whole pipeline on the local broker until every upgrade has "
                    "ended and been invoiced, reconciles and prints a summary.")
    demo.add_argument("--small", action="store_true",
                      help=f"{SMALL['tenants']} tenants and a large one of {SMALL['large_users']:,} users (for tests)")
    demo.add_argument("--tenants", type=_positive, default=None, help="ordinary tenants (default 300)")
    demo.add_argument("--large-users", type=_positive, default=None, help="users of the large tenant (default 200000)")
    demo.add_argument("--date", type=date.fromisoformat, default=None, help="the day (default: today, UTC)")
    demo.add_argument("--seed", default="planshift-demo", help="the day's seed (default planshift-demo)")
    demo.add_argument("--summary-json", type=Path, default=None, help="also write the summary to this JSON file")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the day to end (default 600)")
    demo.set_defaults(handler=run_demo, needs_broker=False)


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run_demo(args, settings: Settings) -> int:
    sizes = dict(SMALL) if args.small else {"tenants": 300, "large_users": 200_000}
    if args.tenants:
        sizes["tenants"] = args.tenants
    if args.large_users:
        sizes["large_users"] = args.large_users
    summary = run(settings, args.date or datetime.now(timezone.utc).date(), seed=args.seed,
                  timeout=args.timeout, **sizes)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
    return 0 if summary.finished else 1


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


@dataclass
class Summary:
    day: str
    finished: bool
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    reason_codes: dict[str, int] = field(default_factory=dict)
    credits: dict[str, dict[str, int]] = field(default_factory=dict)  # currency → {count, amount_minor}
    forfeits: dict[str, dict[str, int]] = field(default_factory=dict)
    switches: int = 0
    users_migrated: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    findings: dict[str, int] = field(default_factory=dict)
    previews: dict[str, int] = field(default_factory=dict)  # agreed, differed
    preview_differences: list[dict[str, Any]] = field(default_factory=list)
    policy_previews: list[dict[str, Any]] = field(default_factory=list)
    reports: str = ""
    chart: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run(settings: Settings, today: date, *, tenants: int = 300, large_users: int = 200_000,
        seed: str = "planshift-demo", timeout: float = 600.0) -> Summary:
    from consumers import intake, migrate, settle
    from consumers.archive import archiver
    from jobs.reconcile import reconcile
    from planshift.kafka import clients
    from planshift.kafka.reader import end_offsets
    from planshift.kafka.topics import create_topics
    from planshift.ops.broker import LocalBroker
    from planshift.ops.view import StatusView
    from planshift.storage.directory import open_directory
    from producers import billing
    from producers.day import demo_day
    from producers.order_system import UpgradeRequestPublisher

    began = time.monotonic()
    day = demo_day(today, tenants=tenants, large_users=large_users, seed=seed)
    step(f"1. Apache Kafka at {settings.bootstrap_servers}")
    local = LocalBroker(settings)
    if not local.status().running and _answers(settings):
        print("a broker that planshift did not start answers there: the demo uses it")
    else:
        status, started = local.start()
        print(("started: " if started else "already running: ") + status.describe())

    step("2. topics of the contract")
    print(create_topics(settings).describe())

    step(f"3. licence directory in {settings.data_dir}")
    directory = open_directory(settings)
    if directory.count():
        print(f"{directory} already holds {directory.count():,} licences: not seeded again "
              f"(a rerun never puts migrated users back on their old plan)")
    else:
        directory.put(day.licences())
        print(f"{directory.count():,} licences of {len(day.stories)} tenants' users, "
              f"{day.users:,} of them on the plans they upgrade from")

    step("4. intake, two migration workers, settlement, a billing system (simulated) and the archiver")
    processors = {"intake": intake.processor(settings), "migrate-0": migrate.processor(settings, instance="0"),
                  "migrate-1": migrate.processor(settings, instance="1"), "settle": settle.processor(settings),
                  "billing (simulated)": billing.processor(settings, rates=DEMO_FAULTS, seed=DEMO_SEED)}
    lake_writer = archiver(settings, flush_interval_s=0.5)
    threads = [threading.Thread(target=p.run, daemon=True, name=name)
               for name, p in [*processors.items(), ("archive", lake_writer)]]
    for thread in threads:
        thread.start()
    view = StatusView(settings)
    summary = Summary(today.isoformat(), finished=False)
    try:
        view.catch_up()
        previews: dict[int, dict[str, Any]] = {}
        with UpgradeRequestPublisher(settings) as publisher, clients.producer(settings) as raw:
            for wave in (1, 2):
                stories = day.wave(wave)
                step(f"5.{wave} the order systems preview and send {len(stories)} requests"
                     + (" (after wave 1: a second upgrade, a retry, an id another tenant took)" if wave == 2 else ""))
                for story in stories:
                    previews[id(story)] = _send(settings, story, view, directory, publisher, raw)
                publisher.flush()
                raw.flush()
                _wait_intake(processors["intake"], end_offsets(settings, settings.topic(Topic.UPGRADE_REQUESTED)),
                             view, [s.upgrade_id for s in stories if previews[id(s)]["verdict"] in DECIDED], timeout)
                print(f"intake handled wave {wave}: {_counts(view)}")
        summary.requests = len(day.stories)

        step("6. the credit system answers, the pipeline runs until every upgrade has ended")
        credit_system = CreditSystem(settings, day)
        summary.finished = _follow(settings, day, view, credit_system, previews, timeout - (time.monotonic() - began))
        print("credit checks: " + (", ".join(f"{n} {what}" for what, n in credit_system.decided.items()) or "none"))
    finally:
        for p in [*processors.values(), lake_writer]:
            p.stop()
        for thread in threads:
            thread.join(60)
        directory.close()
    for name, p in processors.items():
        print(f"{name:<20} handled {p.metrics.records:>7,} records in {p.metrics.commits:>6,} transactions")
    print(f"{'archive':<20} wrote   {lake_writer.sink.archived:>7,} events to the lake")

    view.catch_up()
    view.close()
    run_date = today + timedelta(days=45)
    step(f"7. finance's nightly reconciliation, as of {run_date} (every credit due by then)")
    print(f"the simulated billing system makes these mistakes on purpose: "
          f"{', '.join(f'{k} {v:.0%}' for k, v in DEMO_FAULTS.items())} of the upgrades")
    result = reconcile(settings, run_date, progress=False)
    print(result.describe())
    _summarise(settings, day, view, previews, result, summary)
    summary.seconds = round(time.monotonic() - began, 1)
    step(f"8. the day of {today} in {summary.seconds:.0f}s")
    print(describe(summary))
    return summary


def _answers(settings: Settings) -> bool:
    from planshift.kafka.clients import BrokerUnreachable, require_broker

    try:
        require_broker(settings)
    except BrokerUnreachable:
        return False
    return True


def _send(settings, story, view, directory, publisher, raw) -> dict[str, Any]:
    """Preview the request as its order system would before checkout, then send it."""
    from planshift.ops.view import preview_request

    topic = settings.topic(Topic.UPGRADE_REQUESTED)
    if story.raw is not None:
        raw.send(topic, key=b"fabrikam", value=story.raw, headers=event_headers(Topic.UPGRADE_REQUESTED))
        return {"verdict": "dead-letter", "reasons": []}
    request = with_envelope(story.request, Topic.UPGRADE_REQUESTED)
    verdict = preview_request(view, settings, request, directory).as_dict()
    if story.policy_preview:
        verdict["policy_preview"] = (story.policy_preview, preview_request(
            view, settings.with_(prepaid_policy=story.policy_preview), request, directory).as_dict())
    if story.unchecked:
        raw.send(topic, key=encode_key(story.tenant_id), value=encode_json(request),
                 headers=event_headers(Topic.UPGRADE_REQUESTED))
    else:
        publisher.publish(request)
    return verdict


DECIDED = ("accepted", "credit_check", "rejected")  # previews of requests that get a status of their own


def _wait_intake(intake, ends, view, upgrade_ids: list[str], timeout: float) -> None:
    """Until intake has read the requests and its statuses for them are committed."""
    deadline = time.monotonic() + timeout
    while not intake.caught_up(Topic.UPGRADE_REQUESTED, ends) or any(i not in view.upgrades for i in upgrade_ids):
        if time.monotonic() > deadline:
            raise TimeoutError("intake did not handle the requests in time")
        view.poll(100)


def _counts(view) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(view.counts().items()))


class CreditSystem:
    """The credit system: answers each check as the day's story says, or not at all."""

    def __init__(self, settings: Settings, day):
        from planshift.kafka import clients

        self.settings = settings
        self.stories = {s.upgrade_id: s for s in day.stories if s.request and s.wave == 1}
        self.decided: Counter = Counter()
        self._seen: set[str] = set()
        self._producer = clients.producer(settings)

    def answer(self) -> None:
        from planshift.kafka.reader import iter_topic

        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for check in iter_topic(self.settings, self.settings.topic(Topic.CREDIT_CHECK_REQUESTED)):
            upgrade_id, tenant_id = check.value["upgrade_id"], check.value["tenant_id"]
            if upgrade_id in self._seen:
                continue
            self._seen.add(upgrade_id)
            story = self.stories.get(upgrade_id)
            if story is None or story.decision is None:
                self.decided["left unanswered (it expires)"] += 1
                continue
            approved = story.decision == "approve"
            decision = event(Topic.CREDIT_CHECK_DECIDED, tenant_id, f"{upgrade_id}:decision",
                             upgrade_id=upgrade_id, approved=approved, decided_at=now)
            self._producer.send(self.settings.topic(Topic.CREDIT_CHECK_DECIDED), key=encode_key(tenant_id),
                                value=encode_json(decision), headers=event_headers(Topic.CREDIT_CHECK_DECIDED))
            self.decided["approved" if approved else "declined"] += 1
        self._producer.flush()

    def close(self) -> None:
        self._producer.close()


def _follow(settings: Settings, day, view, credit_system: CreditSystem, previews, timeout: float) -> bool:
    """Progress bars until every upgrade that started has ended and all is invoiced."""
    from tqdm import tqdm

    expected = {s.upgrade_id for s in day.stories
                if s.request and previews.get(id(s), {}).get("verdict") not in ("repeat", "taken", None)}
    users = sum(p.get("users", 0) for s in day.stories if (p := previews.get(id(s), {}))
                and p.get("verdict") in ("accepted", "credit_check") and s.decision == "approve")
    deadline = time.monotonic() + max(timeout, 30)
    with tqdm(total=len(expected), desc="upgrades ended", unit="upgrade", file=sys.stderr, disable=None) as ended, \
            tqdm(total=users, desc="users migrated", unit="user", unit_scale=True, file=sys.stderr,
                 disable=None) as moved:
        answered = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() - answered > 2:
                credit_system.answer()
                answered = time.monotonic()
            view.poll(300)
            upgrades = [view.upgrades[i] for i in expected if i in view.upgrades]
            done = sum(1 for u in upgrades if u.final)
            migrated = sum((u.progress or {}).get("users_done", 0) for u in upgrades
                           if u.status in (Status.MIGRATING, Status.COMPLETED))
            ended.update(done - ended.n)
            moved.update(min(migrated, moved.total) - moved.n)
            if done == len(expected) and _invoices_archived(settings):
                credit_system.close()
                return True
    credit_system.close()
    print(f"the day did not end within its time: {_counts(view)}", file=sys.stderr)
    return False


def _invoices_archived(settings: Settings) -> bool:
    """Every switch and credit has its invoice in the lake, and every status is archived."""
    import pyarrow.parquet as pq

    from planshift.kafka.reader import end_offsets
    from planshift.storage.lake import Lake

    lake = Lake.for_settings(settings)

    def rows(topic: str) -> int:
        return sum(pq.read_metadata(path).num_rows for path in lake.files(topic))

    def records(topic: str) -> int:
        from planshift.kafka.reader import iter_raw
        return sum(1 for _ in iter_raw(settings, settings.topic(topic)))

    if not end_offsets(settings, settings.topic(Topic.BILLING_SWITCH)):
        return False
    switches, credits = records(Topic.BILLING_SWITCH), records(Topic.CREDIT_ISSUED)
    return (rows(Topic.INVOICE_ISSUED) >= switches + credits and rows(Topic.BILLING_SWITCH) >= switches
            and rows(Topic.CREDIT_ISSUED) >= credits
            and rows(Topic.UPGRADE_STATUS) >= records(Topic.UPGRADE_STATUS))


def intake_verdict(upgrade, tenant_id: str, previewed: str) -> dict[str, Any]:
    """What intake decided for a request, in the preview's terms, from `upgrade.status`.
    A repeat leaves no status of its own (the upgrade's first statuses are its first
    request's); a taken id is dead-lettered, so every status stays its owner's."""
    if upgrade is None:
        return {"verdict": "none", "codes": []}
    if previewed in ("repeat", "taken"):
        owners = {s.get("tenant_id") for s in upgrade.history}
        accepted = sum(1 for s in upgrade.history if s["status"] == Status.ACCEPTED)
        if previewed == "repeat" and owners == {tenant_id} and accepted <= 1:
            return {"verdict": "repeat", "codes": []}
        if previewed == "taken" and tenant_id not in owners:
            return {"verdict": "taken", "codes": []}
        return {"verdict": "started again", "codes": []}
    first = upgrade.history[0]
    if first["status"] == Status.REJECTED:
        return {"verdict": "rejected", "codes": [r["code"] for r in first["reasons"]]}
    if len(upgrade.history) > 1 and upgrade.history[1]["status"] == Status.CREDIT_CHECK_PENDING:
        return {"verdict": "credit_check", "codes": []}
    return {"verdict": "accepted", "codes": []}


def _summarise(settings, day, view, previews, result, summary: Summary) -> None:
    from planshift.kafka.reader import iter_topic

    outcomes: Counter = Counter()
    codes: Counter = Counter()
    for upgrade in view:
        outcomes[upgrade.status] += 1
        if upgrade.status == Status.REJECTED:
            codes.update(r["code"] for r in upgrade.reasons)
    credits: dict[str, Counter] = defaultdict(Counter)
    for record in iter_topic(settings, settings.topic(Topic.CREDIT_ISSUED)):
        credits[record.value["currency"]].update(count=1, amount_minor=record.value["amount_minor"])
    forfeits: dict[str, Counter] = defaultdict(Counter)
    for upgrade in view:
        latest = upgrade.latest
        if upgrade.status == Status.COMPLETED:
            summary.users_migrated += (upgrade.progress or {}).get("users_done", 0)
            if latest.get("forfeit_minor"):
                forfeits[latest["currency"]].update(count=1, amount_minor=latest["forfeit_minor"])
    summary.switches = sum(1 for _ in iter_topic(settings, settings.topic(Topic.BILLING_SWITCH)))
    agreed, differed = 0, []
    for story in day.stories:
        preview = previews.get(id(story))
        if preview is None or story.request is None:
            continue
        want = {"verdict": preview["verdict"], "codes": [r["code"] for r in preview["reasons"]]}
        got = intake_verdict(view.upgrades.get(story.upgrade_id), story.tenant_id, want["verdict"])
        if got == want:
            agreed += 1
        else:
            differed.append({"upgrade_id": story.upgrade_id, "kind": story.kind, "preview": want, "intake": got})
        if "policy_preview" in preview:
            policy, other = preview["policy_preview"]
            summary.policy_previews.append({"upgrade_id": story.upgrade_id, "policy": policy,
                                            "verdict": other["verdict"],
                                            "codes": [r["code"] for r in other["reasons"]]})
    summary.outcomes = dict(sorted(outcomes.items()))
    summary.reason_codes = dict(sorted(codes.items()))
    summary.credits = {c: dict(v) for c, v in sorted(credits.items())}
    summary.forfeits = {c: dict(v) for c, v in sorted(forfeits.items())}
    summary.dead_letters = {f"{topic} ({group})": n for (topic, group), n in sorted(view.dead_letter_groups.items())}
    summary.findings = {str(k): int(v) for k, v in result.findings["check_code"].value_counts().sort_index().items()} \
        if len(result.findings) else {}
    summary.previews = {"agreed": agreed, "differed": len(differed)}
    summary.preview_differences = differed
    summary.reports = str(result.output_dir)
    summary.chart = str(result.chart) if result.chart else None


def describe(summary: Summary) -> str:
    def money(minor: int) -> str:
        return f"{minor / 100:,.2f}"

    lines = [f"requests sent: {summary.requests} (one not JSON, one breaking its schema, one retried, "
             f"one with an upgrade id another tenant took)",
             "upgrades by outcome: " + ", ".join(f"{n} {s}" for s, n in summary.outcomes.items()),
             f"users migrated: {summary.users_migrated:,}; billing switches: {summary.switches}",
             "reason codes of the rejections:"]
    lines += [f"  {code:<44} {n}" for code, n in summary.reason_codes.items()]
    for p in summary.policy_previews:
        lines.append(f"  {', '.join(p['codes']) or p['verdict']:<44} preview of {p['upgrade_id']} under "
                     f"PLANSHIFT_PREPAID_POLICY={p['policy']} (the day runs the default checkout_rule)")
    lines.append("credits issued: " + "; ".join(f"{c} {v['count']} for {money(v['amount_minor'])}"
                                                for c, v in summary.credits.items()))
    if summary.forfeits:
        lines.append("prepaid time forfeited: " + "; ".join(f"{c} {v['count']} for {money(v['amount_minor'])}"
                                                          for c, v in summary.forfeits.items()))
    lines.append("dead letters: " + (", ".join(f"{n} from {t}" for t, n in summary.dead_letters.items()) or "none")
                 + " (each consumer group dead-letters what it cannot read)")
    lines.append("findings by check: " + (", ".join(f"{c} {n}" for c, n in summary.findings.items()) or "none"))
    lines.append(f"previews before checkout: {summary.previews.get('agreed', 0)} agreed with intake's decision, "
                 f"{summary.previews.get('differed', 0)} differed")
    for d in summary.preview_differences:
        lines.append(f"  {d['upgrade_id']} ({d['kind']}): preview {d['preview']}, intake {d['intake']}")
    lines.append(f"reports (Parquet): {summary.reports}")
    if summary.chart:
        lines.append(f"chart for finance: {summary.chart}")
    lines.append("Follow an upgrade: 'planshift status UPGRADE_ID', or the page: 'planshift serve' → http://127.0.0.1:8080/")
    lines.append("Run the demo again to see every request recognised and nothing done twice; "
                 "'planshift broker stop' stops the broker.")
    return "\n".join(lines)

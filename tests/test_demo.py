"""`planshift demo --small`: a realistic day completes on a real broker, its summary agrees
with what the topics and the reports hold, every request's preview before checkout is what
intake then decided, and running the day again changes nothing."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date

import pyarrow.parquet as pq
import pytest

from cli import demo
from planshift.catalogue import Catalogue
from planshift.contract import REASONS, Topic, dlq
from planshift.domain.eligibility import TenantView
from planshift.domain.preview import preview
from planshift.events import with_envelope
from planshift.kafka.reader import iter_topic
from producers.day import PATHS, demo_day

TODAY = date(2026, 12, 1)


def test_the_day_meets_every_reason_code_and_its_ordinary_upgrades_are_supported(tmp_path):
    """Pure: the generated day, previewed against an empty cluster, as intake would see it."""
    from planshift.settings import Settings

    settings = Settings.from_env({}).with_(data_dir=tmp_path)
    catalogue = Catalogue.for_settings(settings)
    day = demo_day(TODAY)
    assert day == demo_day(TODAY), "seeded: the same day twice"
    assert demo_day(date(2026, 12, 2)).stories[1].request != day.stories[1].request
    assert len([s for s in day.stories if s.kind == "ordinary"]) == 300
    assert day.stories[0].kind == "large" and day.stories[0].holders == 200_000
    verdicts, codes = Counter(), Counter()
    for story in day.wave(1):
        if story.request is None:
            continue
        result = preview(with_envelope(story.request, Topic.UPGRADE_REQUESTED),
                         TenantView(story.holders, {}, None, story.policy_preview or "checkout_rule"), catalogue,
                         TODAY, batch_size=500, credit_check_threshold_minor=settings.credit_check_threshold_minor,
                         credit_check_expiry_days=10)
        verdicts[(story.kind, result.verdict)] += 1
        codes.update(r["code"] for r in result.reasons)
        if story.kind in ("ordinary", "large"):
            assert result.verdict in ("accepted", "credit_check"), (story.kind, result.reasons)
            period = story.request["tenant"]["subscriptions"][0]["current_period"]
            assert date.fromisoformat(period["start"]) <= TODAY < date.fromisoformat(period["end"])
    used = {(s.request["tenant"]["subscriptions"][0]["sku"], s.request["target_sku"])
            for s in day.stories if s.kind == "ordinary"}
    assert used == set(PATHS), "every supported path is taken by some tenant, and every one previewed accepted"
    # every code intake decides on a request's own; the credit-check ones and CHANGE_IN_PROGRESS come later
    later = {"CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING", "CREDIT_CHECK_DECLINED", "CREDIT_CHECK_EXPIRED"}
    assert set(codes) == {r.code for r in REASONS} - later, set(codes) ^ ({r.code for r in REASONS} - later)
    assert verdicts[("CREDIT_CHECK_DECLINED", "credit_check")] == 2
    assert verdicts[("CREDIT_CHECK_EXPIRED", "credit_check")] == 1
    assert verdicts[("prepaid-forfeit", "rejected")] == 1  # under the block policy: PREPAID_PLAN


@pytest.mark.broker
def test_the_small_demo_day_completes_and_its_summary_is_what_the_topics_and_reports_hold(settings):
    summary = demo.run(settings, TODAY, **demo.SMALL)
    assert summary.finished

    finals: dict[str, dict] = {}
    history: dict[str, list[str]] = defaultdict(list)
    for record in iter_topic(settings, settings.topic(Topic.UPGRADE_STATUS)):
        finals[record.value["upgrade_id"]] = record.value
        history[record.value["upgrade_id"]].append(record.value["status"])
    outcomes = Counter(v["status"] for v in finals.values())
    assert summary.outcomes == dict(outcomes)
    assert set(outcomes) <= {"completed", "rejected", "failed"}, "the day ran until every upgrade ended"
    codes = Counter(r["code"] for v in finals.values() if v["status"] == "rejected" for r in v["reasons"])
    assert summary.reason_codes == dict(codes)
    assert set(codes) | {p_code for p in summary.policy_previews for p_code in p["codes"]} == {r.code for r in REASONS}

    credits = defaultdict(Counter)
    for record in iter_topic(settings, settings.topic(Topic.CREDIT_ISSUED)):
        credits[record.value["currency"]].update(count=1, amount_minor=record.value["amount_minor"])
    assert summary.credits == {c: dict(v) for c, v in credits.items()}
    credited = [v for v in finals.values() if v["status"] == "completed" and v["credit_minor"] > 0]
    assert sum(v["count"] for v in summary.credits.values()) == len(credited), "one credit per credited upgrade"
    assert summary.switches == outcomes["completed"] == len(list(iter_topic(settings, settings.topic(Topic.BILLING_SWITCH))))
    assert summary.forfeits and sum(v["count"] for v in summary.forfeits.values()) == 1

    findings = pq.read_table(settings.data_dir / "reports" / "reconciliation" / "findings").to_pandas()
    assert summary.findings == {str(k): int(v) for k, v in findings["check_code"].value_counts().items()}
    assert len(summary.findings) >= 3, "the billing system's injected mistakes are found"
    assert summary.chart and (settings.data_dir / "reports" / "reconciliation" / "charts").exists()

    requests = sum(1 for s in demo_day(TODAY, **demo.SMALL).stories if s.request is not None)
    assert summary.previews == {"agreed": requests, "differed": 0}, summary.preview_differences
    intake_dead = [r for r in iter_topic(settings, settings.topic(dlq(Topic.UPGRADE_REQUESTED)))
                   if r.headers.get("dlq.consumer.group", b"").endswith(b"planshift-intake")]
    assert len(intake_dead) == 4  # not JSON, a broken schema, an impossible period, a taken upgrade id
    assert [n for key, n in summary.dead_letters.items() if key.endswith("planshift-intake)")] == [4]

    # The same day again: every request is recognised, nothing is switched or credited twice.
    again = demo.run(settings, TODAY, **demo.SMALL)
    assert again.finished
    assert again.outcomes == summary.outcomes and again.credits == summary.credits
    assert again.switches == summary.switches
    assert again.previews == {"agreed": requests, "differed": 0}, again.preview_differences

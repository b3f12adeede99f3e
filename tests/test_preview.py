"""The upgrade preview (issue 17, part 3): for every request, its verdict is what intake
then decides, and its credit what settlement then issues. Nothing is sent by a preview."""

from __future__ import annotations

import pytest

from consumers.intake import TenantState
from planshift.catalogue import Catalogue
from planshift.contract import Topic
from planshift.domain.eligibility import TenantView
from planshift.domain.preview import preview
from tests.drivers import Pipeline

# (name, users in the directory, request overrides, edit of the request, service health)
CASES = [
    ("eligible", 10, {"licenses": 10}, None, {}),
    ("credit check", 10, {"licenses": 10, "new_total_cost_minor": 2_000_000}, None, {}),
    ("more users than licences", 12, {"licenses": 10}, None, {}),
    ("unpaid balance", 10, {"licenses": 10, "unpaid_balance_minor": 500}, None, {}),
    ("a service incident", 10, {"licenses": 10}, None, {"EXCHANGE": "incident"}),
    ("an expired subscription", 10, {"licenses": 10, "status": "expired"}, None, {}),
    ("the same plan", 10, {"licenses": 10, "target_sku": "M365_BUSINESS_STANDARD"}, None, {}),
    ("a prepaid plan, forfeit acknowledged", 10,
     {"licenses": 10, "prepaid": {"term_start": "2026-01-01", "term_end": "2027-01-01", "paid_minor": 1_200_000},
      "new_total_cost_minor": 50_000, "prepaid_forfeit_acknowledged": True}, None, {}),
    ("a prepaid plan, forfeit not acknowledged", 10,
     {"licenses": 10, "prepaid": {"term_start": "2026-01-01", "term_end": "2027-01-01", "paid_minor": 1_200_000},
      "new_total_cost_minor": 50_000}, None, {}),
    ("an impossible date", 10, {"licenses": 10}, lambda r: r["tenant"]["subscriptions"][0]["current_period"]
     .update(end="2026-11-31"), {}),
    ("a broken schema", 10, {"licenses": 10}, lambda r: r.update(licenses="ten"), {}),
]


def decided(pipeline: Pipeline, upgrade_id: str) -> tuple[str, list[str]]:
    """Intake's decision: (verdict, reason codes), from the statuses it emitted."""
    names = pipeline.status_names(upgrade_id)
    if "rejected" in names:
        return "rejected", pipeline.codes(upgrade_id)
    if "credit_check_pending" in names:
        return "credit_check", []
    if "migrating" in names:
        return "accepted", []
    return "none", []


def previewed(pipeline: Pipeline, request: dict, known: str | None = None):
    store = pipeline.intake.engine.stores.get(next(iter(pipeline.intake.engine.stores), 0))
    tenant = TenantState.load(store, request["tenant_id"]) if store is not None else None
    view = TenantView(pipeline.store.count_holders(request["tenant_id"], request["source_subscription_id"]),
                      {k: v["status"] for k, v in pipeline.health.items()},
                      tenant.in_flight if tenant else None, pipeline.settings.prepaid_policy)
    s = pipeline.settings
    return preview(request, view, Catalogue.for_settings(s), pipeline.clock.moment.date(), batch_size=s.batch_size,
                   credit_check_threshold_minor=s.credit_check_threshold_minor,
                   credit_check_expiry_days=s.credit_check_expiry_days, known=known)


@pytest.mark.parametrize("name,users,overrides,edit,health", CASES, ids=[c[0] for c in CASES])
def test_the_previews_verdict_is_what_intake_decides(tmp_path, name, users, overrides, edit, health):
    pipeline = Pipeline(tmp_path)
    pipeline.seed("contoso", users)
    for service, status in health.items():
        pipeline.set_health(service, status)
    request = pipeline.request("contoso", "ord-1", **overrides, edit=edit)
    seen = previewed(pipeline, request)
    assert pipeline.events(Topic.UPGRADE_STATUS) == []  # a preview sends nothing
    pipeline.publish(request)
    pipeline.run()
    verdict, codes = decided(pipeline, "ord-1")
    assert seen.verdict == verdict, (seen.as_dict(), pipeline.status_names("ord-1"))
    assert [r["code"] for r in seen.reasons] == codes
    if verdict == "accepted":
        assert seen.batches == len(pipeline.of(Topic.LICENSE_BATCHES, "ord-1")) and seen.users == users
        credits = pipeline.of(Topic.CREDIT_ISSUED, "ord-1")  # settled on the same (test) day
        issued = credits[0]["amount_minor"] if credits else 0
        assert seen.credit["amount_minor"] == issued and seen.credit["due_by"] == (
            credits[0]["due_by"] if credits else seen.credit["due_by"])
        completed = pipeline.last("ord-1")
        assert completed["status"] == "completed" and seen.credit["forfeit_minor"] == (completed["forfeit_minor"] or 0)


def test_a_repeat_and_an_upgrade_in_flight_are_previewed_as_intake_treats_them(tmp_path):
    pipeline = Pipeline(tmp_path)
    pipeline.seed("contoso", 10)
    first = pipeline.request("contoso", "ord-1", licenses=10)
    pipeline.publish(first)
    pipeline.run(pipeline.intake)  # migrating: the tenant is locked
    again = previewed(pipeline, first, known="repeat")
    assert again.verdict == "repeat"
    second = pipeline.request("contoso", "ord-2", licenses=10)
    seen = previewed(pipeline, second)
    pipeline.publish(second)
    pipeline.run(pipeline.intake)
    assert seen.verdict == "rejected" and [r["code"] for r in seen.reasons] == pipeline.codes("ord-2")


def test_planshift_preview_reads_the_cluster_and_the_directory_and_sends_nothing(settings, tmp_path, monkeypatch,
                                                                                  capsys):
    import json
    from datetime import date

    from cli import main
    from consumers import intake
    from planshift.events import with_envelope
    from planshift.kafka.reader import read_topic
    from producers.samples import upgrade_request
    from tests.conftest import produce, running, seed_users, wait_for

    for name, value in (("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers),
                        ("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix),
                        ("PLANSHIFT_DATA_DIR", str(settings.data_dir))):
        monkeypatch.setenv(name, value)
    seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 4)

    def request(tenant, upgrade):
        return with_envelope(upgrade_request(tenant, upgrade, today=date.today(), licenses=4), "upgrade.requested")

    def ask(value) -> dict:
        path = tmp_path / "request.json"
        path.write_text(json.dumps(value))
        assert main(["preview", str(path), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    fresh = ask(request("contoso", "ord-1"))
    assert fresh["verdict"] == "accepted" and fresh["users"] == 4 and fresh["batches"] == 1
    assert fresh["credit_if_completed_today"]["currency"] == "EUR"
    assert read_topic(settings, settings.topic(Topic.UPGRADE_STATUS)) == []  # nothing was sent

    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request("contoso", "ord-1"))])
    with running(intake.processor(settings, commit_interval_ms=50)):
        wait_for(lambda: any(r.value["status"] == "migrating" for r in
                             read_topic(settings, settings.topic(Topic.UPGRADE_STATUS))), 30, message="migrating")
    assert ask(request("contoso", "ord-1"))["verdict"] == "repeat"
    assert ask(request("fabrikam", "ord-1"))["verdict"] == "taken"
    locked = ask(request("contoso", "ord-2"))
    assert locked["verdict"] == "rejected" and locked["reasons"][0]["code"] == "CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING"
    path = tmp_path / "request.json"
    assert main(["preview", str(path)]) == 0
    assert "would be rejected" in capsys.readouterr().out
    path.write_text("{not json")
    assert main(["preview", str(path)]) == 1
    assert "not JSON" in capsys.readouterr().err

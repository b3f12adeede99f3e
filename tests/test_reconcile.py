"""Reconciliation (CONTRACT.md §6 r2) against a billing system that bills in advance.

One case per check code — the invoice pattern that raises exactly it — and the harmless
patterns that raise nothing. The inputs are what the pipeline emits (settlement's money
rules) and what the billing simulator invoices (run on the broker-free test driver),
written to a lake on disk; no broker is needed.
"""

from __future__ import annotations

from datetime import date, timedelta
from itertools import count

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from jobs.reconcile import reconcile
from planshift.contract import Topic
from planshift.domain.money import subscription_credit
from planshift.events import event
from planshift.runtime.testing import TestDriver
from planshift.settings import Settings
from planshift.storage.lake import Lake, event_date, to_row
from producers.billing import BillingSimulator, billing_config
from producers.samples import upgrade_request

EFFECTIVE = date(2026, 11, 17)
RUN = date(2026, 12, 31)  # after every due date (2026-12-17)
_offsets = count()


def upgrade_events(n: int, currency="EUR", prepaid=None, new_cost=264_000, tamper_credit=0, effective=EFFECTIVE,
                   billed=150_000, period=None, issue_credit=True):
    """request, switch, credit (or None), completed status of upgrade n, as planshift emits them."""
    tenant, upgrade_id = f"t{n:03d}", f"ord-{n:03d}"
    request = upgrade_request(tenant, upgrade_id, today=effective, currency=currency, prepaid=prepaid,
                              new_total_cost_minor=new_cost, prepaid_forfeit_acknowledged=True, billed_minor=billed)
    if period is not None:
        request["tenant"]["subscriptions"][0]["current_period"].update(start=period[0], end=period[1])
    request = event(Topic.UPGRADE_REQUESTED, tenant, f"req-{n}", **{k: v for k, v in request.items()
                                                                   if k not in ("tenant_id", "occurred_at")})
    source = request["tenant"]["subscriptions"][0]
    credit = subscription_credit(source, effective, new_cost)
    when = pd.Timestamp(effective, tz="UTC").to_pydatetime()
    switch = event(Topic.BILLING_SWITCH, tenant, f"{upgrade_id}:billing-switch", occurred_at=when,
                   upgrade_id=upgrade_id, old_subscription_id=source["subscription_id"], old_sku=source["sku"],
                   new_subscription_id=request["target_subscription_id"], new_sku=request["target_sku"],
                   licenses=request["licenses"], effective_date=effective.isoformat(), billing_frequency="monthly",
                   currency=currency, new_total_cost_minor=new_cost)
    issued = None
    if credit.amount_minor > 0 and issue_credit:
        issued = event(Topic.CREDIT_ISSUED, tenant, f"{upgrade_id}:credit", occurred_at=when,
                       credit_id=f"{upgrade_id}:credit", upgrade_id=upgrade_id,
                       subscription_id=source["subscription_id"], currency=currency,
                       amount_minor=credit.amount_minor + tamper_credit, basis=credit.basis,
                       unused_days=credit.unused_days, period_days=credit.period_days,
                       period_start=credit.period_start.isoformat(), period_end=credit.period_end.isoformat(),
                       forfeit_minor=credit.forfeit_minor, due_by=(effective + timedelta(days=30)).isoformat())
    completed = event(Topic.UPGRADE_STATUS, tenant, f"{upgrade_id}:status:completed", occurred_at=when,
                      upgrade_id=upgrade_id, status="completed", reasons=[], credit_minor=credit.amount_minor,
                      forfeit_minor=credit.forfeit_minor, currency=currency, service_plan_resets=0,
                      new_subscription_id=request["target_subscription_id"])
    return request, switch, issued, completed


def invoices(simulator: BillingSimulator, upgrades: list[tuple]) -> list[dict]:
    """What the billing simulator invoices for these upgrades (request, switch, credit in order)."""
    driver = TestDriver(Settings.from_env({}), billing_config(Settings.from_env({}), simulator=simulator))
    for request, switch, credit, _ in upgrades:
        driver.pipe(Topic.UPGRADE_REQUESTED, request)
        driver.pipe(Topic.BILLING_SWITCH, switch)
        if credit is not None:
            driver.pipe(Topic.CREDIT_ISSUED, credit)
    return driver.read(Topic.INVOICE_ISSUED)


def archive(lake: Lake, topic: str, events: list[dict]) -> None:
    if not events:
        return
    rows = []
    for e in events:
        offset = next(_offsets)
        row = to_row(topic, 0, offset, 0, e["tenant_id"], e, "{}")
        row["_event_date"] = event_date(e)
        rows.append(row)
    lake.write(topic, 0, sorted(rows, key=lambda r: r["_event_date"]))


def build_lake(settings: Settings, upgrades: list[tuple], simulator: BillingSimulator, extra_invoices=(),
               extra_credits=()) -> None:
    lake = Lake.for_settings(settings)
    archive(lake, Topic.UPGRADE_REQUESTED, [u[0] for u in upgrades])
    archive(lake, Topic.BILLING_SWITCH, [u[1] for u in upgrades])
    archive(lake, Topic.CREDIT_ISSUED, [u[2] for u in upgrades if u[2] is not None] + list(extra_credits))
    archive(lake, Topic.UPGRADE_STATUS, [u[3] for u in upgrades])
    archive(lake, Topic.INVOICE_ISSUED, invoices(simulator, upgrades) + list(extra_invoices))


def run(settings: Settings, on: date = RUN):
    return reconcile(settings, on, progress=False, chart=False)


def errors_of(result) -> pd.DataFrame:
    return result.findings[result.findings["severity"] == "error"].reset_index(drop=True)


def statuses(result) -> dict:
    return dict(zip(result.upgrades["upgrade_id"], result.upgrades["status"]))


@pytest.fixture
def local_settings(tmp_path) -> Settings:
    return Settings.from_env({}).with_(data_dir=tmp_path / "var")


class OneUpgrade(BillingSimulator):
    """The simulator with one fault forced on one upgrade only."""

    def __init__(self, fault: str | None, target: str = "ord-001"):
        super().__init__({})
        self.fault, self.target = fault, target

    def faulty(self, fault: str, upgrade_id: str) -> bool:
        return fault == self.fault and upgrade_id == self.target


# -- one case per check code ---------------------------------------------------------------
# Upgrade 1 carries the fault; upgrades 0 and 2 are clean neighbours. The appendix's numbers:
# November billed 150000 on 11-01 for [11-01, 12-01), effective 11-17: 14 days unused, credit 70000.
FAULT_CASES = [
    # fault, check code, expected_minor, actual_minor, delta_minor, overlap_days, currency
    # the old plan's December billed after the switch: 14 + 31 days charged, 14 given back;
    # 31 days too many at (70000 + 150000) / 45 a day
    ("overlap", "OVERLAP", 0, 151_556, 151_556, 31, "EUR"),
    # the new plan billed from 11-20 for [11-20, 12-17): 3 of 27 days not billed
    ("new-billing-gap", "NEW_BILLING_GAP", 29_333, 0, -29_333, -3, "EUR"),
    # the new plan billed from 11-10 for [11-10, 12-17): 7 of 37 days before the switch
    ("new-billing-early", "NEW_BILLING_EARLY", 0, 49_946, 49_946, 7, "EUR"),
    ("missing-credit", "MISSING_CREDIT", 70_000, 0, -70_000, None, "EUR"),
    ("late-credit", "LATE_CREDIT", 70_000, 70_000, 0, None, "EUR"),
    ("wrong-amount", "AMOUNT_MISMATCH", 70_000, 69_900, -100, None, "EUR"),
    ("duplicate-credit", "DUPLICATE_CREDIT", 0, 70_000, 70_000, None, "EUR"),
    ("orphan-credit", "ORPHAN_CREDIT", 0, 500, 500, None, "EUR"),
    # invoiced as 70000 USD: reported in USD, compared with nothing in EUR
    ("wrong-currency", "CURRENCY_MISMATCH", None, 70_000, 0, None, "USD"),
]


@pytest.mark.parametrize("fault,code,expected,actual,delta,days,currency", FAULT_CASES, ids=[c[1] for c in FAULT_CASES])
def test_each_check_is_raised_by_exactly_its_fault(local_settings, fault, code, expected, actual, delta, days,
                                                   currency):
    build_lake(local_settings, [upgrade_events(n) for n in range(3)], OneUpgrade(fault))
    result = run(local_settings)
    errors = errors_of(result)
    assert list(errors["check_code"]) == [code]
    row = errors.iloc[0]
    if code == "ORPHAN_CREDIT":  # a credit nobody issued belongs to no known upgrade
        assert pd.isna(row["upgrade_id"]) and row["credit_id"] == "ord-001:credit-from-elsewhere"
    else:
        assert row["upgrade_id"] == "ord-001"
    assert row["tenant_id"] == "t001" and row["currency"] == currency
    for column, value in (("expected_minor", expected), ("actual_minor", actual), ("delta_minor", delta),
                          ("overlap_days", days)):
        assert (pd.isna(row[column]) if value is None else row[column] == value), (column, row[column])
    assert statuses(result)["ord-000"] == statuses(result)["ord-002"] == "MATCHED"
    if code != "ORPHAN_CREDIT":
        assert statuses(result)["ord-001"] == "OPEN"


def test_a_credit_the_rules_owe_that_planshift_never_issued_is_missing(local_settings):
    """Issue 11: rules give 70000, no credit.issued → MISSING_CREDIT once due, never MATCHED."""
    upgrades = [upgrade_events(0), upgrade_events(1, issue_credit=False)]
    build_lake(local_settings, upgrades, BillingSimulator({}))
    before = run(local_settings, date(2026, 12, 10))
    assert len(errors_of(before)) == 0 and statuses(before)["ord-001"] == "PENDING"
    after = run(local_settings)
    (row,) = errors_of(after).itertuples()
    assert (row.check_code, row.upgrade_id, row.expected_minor, row.delta_minor) == \
        ("MISSING_CREDIT", "ord-001", 70_000, -70_000)
    assert row.credit_id == "ord-001:credit" and row.due_by == pd.Timestamp(2026, 12, 17)
    assert statuses(after) == {"ord-000": "MATCHED", "ord-001": "OPEN"}


def test_more_than_one_credit_for_one_upgrade_is_a_duplicate(local_settings):
    upgrades = [upgrade_events(1)]
    second = {**upgrades[0][2], "event_id": "ord-001:credit-2", "credit_id": "ord-001:credit-2"}
    build_lake(local_settings, upgrades, BillingSimulator({}), extra_credits=[second])
    codes = list(errors_of(run(local_settings))["check_code"])
    assert "DUPLICATE_CREDIT" in codes and codes.count("DUPLICATE_CREDIT") == 1


def test_an_issued_credit_that_breaks_the_rules_is_a_mismatch(local_settings):
    build_lake(local_settings, [upgrade_events(1, tamper_credit=11)], BillingSimulator({}))
    (row,) = errors_of(run(local_settings)).itertuples()
    # the invoice matches the issued credit; the issued credit is 11 above the rules
    assert (row.check_code, row.expected_minor, row.actual_minor) == ("AMOUNT_MISMATCH", 70_000, 70_011)


# -- what the issue found wrong, each now right --------------------------------------------

def test_the_contracts_appendix_example_is_matched(local_settings):
    """November billed 150000 on 11-01, completed 11-17, credit 70000 invoiced on time: no OVERLAP."""
    build_lake(local_settings, [upgrade_events(1)], BillingSimulator({}))
    result = run(local_settings)
    assert len(result.findings) == 0 and statuses(result) == {"ord-001": "MATCHED"}


def test_a_split_credit_is_compared_by_its_sum(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("split-credit"))
    lines = [line for i in invoices(OneUpgrade("split-credit"), [upgrade_events(1)]) for line in i["lines"]
             if line["kind"] == "credit"]
    assert len(lines) == 2 and -sum(line["amount_minor"] for line in lines) == 70_000
    result = run(local_settings)
    assert len(result.findings) == 0 and result.summary.empty


def test_a_redelivered_invoice_counts_once(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("redelivered-invoice"))
    credit_invoices = [i for i in invoices(OneUpgrade("redelivered-invoice"), [upgrade_events(1)])
                       if i["invoice_id"] == "inv-ord-001-credit"]
    assert len(credit_invoices) == 2 and len({i["event_id"] for i in credit_invoices}) == 2
    result = run(local_settings)
    assert len(result.findings) == 0 and statuses(result) == {"ord-001": "MATCHED"}


def test_another_currency_is_never_summed_with_the_issued_one(local_settings):
    upgrades = [upgrade_events(1, currency="EUR")]
    build_lake(local_settings, upgrades, OneUpgrade("wrong-currency"))
    result = run(local_settings)
    assert list(errors_of(result)["check_code"]) == ["CURRENCY_MISMATCH"]
    assert set(result.summary["currency"]) == {"USD"} and result.summary["delta_minor"].sum() == 0


# -- harmless patterns: no error finding ---------------------------------------------------

def test_an_upgrade_on_a_period_boundary_owes_no_credit_and_is_matched(local_settings):
    upgrade = upgrade_events(1, effective=date(2026, 12, 1), period=("2026-11-01", "2026-12-01"))
    assert upgrade[2] is None  # nothing unused: no credit
    build_lake(local_settings, [upgrade], BillingSimulator({}))
    result = run(local_settings, date(2027, 1, 31))
    assert len(result.findings) == 0 and statuses(result) == {"ord-001": "MATCHED"}


def test_a_prepaid_upgrade_with_a_forfeit_is_information_only(local_settings):
    prepaid = {"term_start": "2026-01-01", "term_end": "2027-01-01", "paid_minor": 365_000}
    build_lake(local_settings, [upgrade_events(4, prepaid=prepaid, new_cost=20_000)], BillingSimulator({}))
    result = run(local_settings)
    assert list(result.findings["check_code"]) == ["PREPAID_FORFEIT"]
    assert result.findings.iloc[0]["severity"] == "info" and result.findings.iloc[0]["actual_minor"] == 25_000
    assert statuses(result) == {"ord-004": "MATCHED"}


def test_a_missing_credit_is_only_pending_before_its_due_date(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("missing-credit"))
    early = run(local_settings, date(2026, 12, 1))
    assert len(early.findings) == 0 and list(early.upgrades["status"]) == ["PENDING"]


def test_a_day_without_any_invoice_finds_every_overdue_credit_missing(local_settings):
    lake = Lake.for_settings(local_settings)
    upgrades = [upgrade_events(n) for n in range(2)]
    for topic, index in ((Topic.UPGRADE_REQUESTED, 0), (Topic.BILLING_SWITCH, 1), (Topic.CREDIT_ISSUED, 2),
                         (Topic.UPGRADE_STATUS, 3)):
        archive(lake, topic, [u[index] for u in upgrades])
    result = run(local_settings)
    assert list(result.findings["check_code"]) == ["MISSING_CREDIT", "MISSING_CREDIT"]
    assert list(result.findings["delta_minor"]) == [-70000, -70000]
    assert list(result.upgrades["status"]) == ["OPEN", "OPEN"]


ZONES = st.sampled_from(["EUR", "USD", "JPY", "GBP", "CHF"])


@st.composite
def advance_billed_world(draw):
    """Upgrades on any day of any month, with any amounts and currencies, prepaid or not,
    billed in advance without a fault (the harmless patterns at any rate)."""
    upgrades = []
    for n in range(draw(st.integers(1, 6))):
        month_start = date(2026, draw(st.integers(1, 12)), 1)
        effective = month_start + timedelta(days=draw(st.integers(0, 27)))
        prepaid = None
        new_cost = draw(st.integers(1, 5_000_000))
        if draw(st.booleans()):
            start = effective - timedelta(days=draw(st.integers(1, 300)))
            prepaid = {"term_start": start.isoformat(), "term_end": (start + timedelta(days=365)).isoformat(),
                       "paid_minor": draw(st.integers(0, 10_000_000))}
        upgrades.append(upgrade_events(n, currency=draw(ZONES), prepaid=prepaid, new_cost=new_cost,
                                       effective=effective, billed=draw(st.integers(0, 3_000_000))))
    rates = {"redelivered-invoice": draw(st.sampled_from([0.0, 0.5, 1.0])),
             "split-credit": draw(st.sampled_from([0.0, 0.5, 1.0]))}
    return upgrades, rates


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=advance_billed_world())
def test_any_fault_free_advance_billed_world_has_no_error_and_every_upgrade_matched(tmp_path_factory, world):
    upgrades, rates = world
    settings = Settings.from_env({}).with_(data_dir=tmp_path_factory.mktemp("world") / "var")
    build_lake(settings, upgrades, BillingSimulator(rates, seed="property"))
    result = run(settings, date(2027, 12, 31))
    assert len(errors_of(result)) == 0, errors_of(result)[["check_code", "upgrade_id", "details"]].to_string()
    assert set(result.upgrades["status"]) == {"MATCHED"} and len(result.upgrades) == len(upgrades)


# -- the outputs ---------------------------------------------------------------------------

def test_a_fault_free_day_has_no_error_and_a_chart(local_settings):
    upgrades = [upgrade_events(n, currency=c) for n, c in enumerate(["EUR", "USD", "JPY", "GBP"] * 5)]
    build_lake(local_settings, upgrades, BillingSimulator({}))
    result = reconcile(local_settings, RUN, progress=False, chart=True)
    assert (result.findings["severity"] == "error").sum() == 0
    assert set(result.upgrades["status"]) == {"MATCHED"} and len(result.upgrades) == 20
    assert result.chart.exists() and result.chart.read_bytes()[:4] == b"\x89PNG"


def test_tenant_buckets_give_the_same_report_as_one(local_settings, tmp_path):
    upgrades = [upgrade_events(n) for n in range(24)]
    faults = BillingSimulator({f: 0.25 for f in ("overlap", "late-credit", "wrong-amount", "orphan-credit",
                                                 "new-billing-early", "duplicate-credit", "redelivered-invoice")})
    build_lake(local_settings, upgrades, faults)
    whole = reconcile(local_settings, RUN, progress=False, chart=False, buckets=1)
    split = reconcile(local_settings, RUN, progress=False, chart=False, buckets=5)
    assert len(whole.findings) > 5
    pd.testing.assert_frame_equal(whole.findings, split.findings)
    pd.testing.assert_frame_equal(whole.upgrades, split.upgrades)


def test_outputs_are_hive_partitioned_with_the_contract_columns_and_a_rerun_is_byte_identical(local_settings):
    upgrades = [upgrade_events(n) for n in range(12)]
    build_lake(local_settings, upgrades, BillingSimulator({f: 0.3 for f in
                                                           ("overlap", "late-credit", "wrong-amount", "orphan-credit")}))
    first = run(local_settings)
    root = first.output_dir
    files = {name: root / name / f"run_date={RUN}" / "part-0.parquet" for name in ("findings", "upgrades", "summary")}
    before = {name: path.read_bytes() for name, path in files.items()}
    again = run(local_settings)
    assert {name: path.read_bytes() for name, path in files.items()} == before
    assert len(again.findings) == len(first.findings) > 0

    findings = pq.read_table(root / "findings").to_pandas()  # Hive partitioning brings run_date back
    assert set(findings.columns) == {"run_date", "tenant_id", "upgrade_id", "check_code", "severity", "currency",
                                     "expected_minor", "actual_minor", "delta_minor", "overlap_days", "credit_id",
                                     "invoice_id", "line_id", "effective_date", "due_by", "days_late", "details"}
    summary = pq.read_table(root / "summary").to_pandas()
    assert set(summary.columns) == {"run_date", "check_code", "currency", "count", "delta_minor"}
    assert summary["count"].sum() == len(first.findings)
    upgrades_out = pq.read_table(root / "upgrades").to_pandas()
    assert {"status", "upgrade_id"} <= set(upgrades_out.columns) and len(upgrades_out) == 12
    assert not list(root.glob("*/.run_date=*"))  # no staging folder left behind


def test_late_credit_counts_days_late(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("late-credit"))
    late = run(local_settings).findings.iloc[0]
    assert late["days_late"] == 7 and late["due_by"] == pd.Timestamp(2026, 12, 17)


def test_events_after_the_run_date_are_left_out(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("overlap"))
    result = run(local_settings, EFFECTIVE - timedelta(days=1))
    assert len(result.upgrades) == 0 and len(result.findings) == 0


def test_the_nightly_run_pushes_its_findings_to_a_real_pushgateway_for_the_past_due_alert(local_settings, tmp_path,
                                                                                          monkeypatch, capsys):
    """Issue 14: a credit past due (MISSING_CREDIT) reaches Prometheus through the
    Pushgateway, and the next run replaces it."""
    from prometheus_client.parser import text_string_to_metric_families

    from cli import main
    from planshift.ops.prometheus import LocalPushgateway

    def findings(text):
        return {s.labels["check"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "planshift_reconciliation_findings" and s.labels.get("job") == "planshift-reconcile"}

    build_lake(local_settings, [upgrade_events(n) for n in range(3)], OneUpgrade("missing-credit"))
    monkeypatch.setenv("PLANSHIFT_DATA_DIR", str(local_settings.data_dir))
    gateway = LocalPushgateway().start()
    try:
        assert main(["reconcile", "--date", RUN.isoformat(), "--no-chart", "--pushgateway", gateway.url]) == 0
        assert "pushed to" in capsys.readouterr().out
        pushed = findings(gateway.metrics())
        assert pushed["MISSING_CREDIT"] == 1 and pushed["OVERLAP"] == 0 and len(pushed) == 10
        # before the credit was due, the same lake owes nothing yet: the push replaces the last one
        monkeypatch.setenv("PLANSHIFT_PUSHGATEWAY_URL", gateway.url)
        assert main(["reconcile", "--date", "2026-12-10", "--no-chart"]) == 0
        assert findings(gateway.metrics())["MISSING_CREDIT"] == 0
    finally:
        gateway.stop()
    assert main(["reconcile", "--date", RUN.isoformat(), "--no-chart", "--pushgateway", gateway.url]) == 1
    assert "pushing the findings" in capsys.readouterr().err

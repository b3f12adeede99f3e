"""Reconciliation (CONTRACT.md §6): each check raised by exactly the fault that causes it.

The inputs are built as the pipeline builds them (settlement's money rules, the billing
simulator's invoices) and written to a lake on disk; no broker is needed.
"""

from __future__ import annotations

from datetime import date, timedelta
from itertools import count

import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs.reconcile import reconcile
from planshift.contract import Topic
from planshift.domain.money import subscription_credit
from planshift.events import event
from planshift.lake import Lake, event_date, to_row
from planshift.runtime.context import Context
from planshift.settings import Settings
from producers.billing import BillingSimulator
from producers.samples import upgrade_request

EFFECTIVE = date(2026, 11, 17)
RUN = date(2026, 12, 31)  # after every due date (2026-12-17)
_offsets = count()


def upgrade_events(n: int, currency="EUR", prepaid=None, new_cost=264_000, tamper_credit=0):
    """request, switch, credit (or None), completed status of upgrade n, as planshift emits them."""
    tenant, upgrade_id = f"t{n:03d}", f"ord-{n:03d}"
    request = upgrade_request(tenant, upgrade_id, today=EFFECTIVE, currency=currency, prepaid=prepaid,
                              new_total_cost_minor=new_cost, prepaid_forfeit_acknowledged=True)
    request = event(Topic.UPGRADE_REQUESTED, tenant, f"req-{n}", **{k: v for k, v in request.items()
                                                                   if k not in ("tenant_id", "occurred_at")})
    source = request["tenant"]["subscriptions"][0]
    credit = subscription_credit(source, EFFECTIVE, new_cost)
    when = pd.Timestamp(EFFECTIVE, tz="UTC").to_pydatetime()
    switch = event(Topic.BILLING_SWITCH, tenant, f"{upgrade_id}:billing-switch", occurred_at=when,
                   upgrade_id=upgrade_id, old_subscription_id=source["subscription_id"], old_sku=source["sku"],
                   new_subscription_id=request["target_subscription_id"], new_sku=request["target_sku"],
                   licenses=request["licenses"], effective_date=EFFECTIVE.isoformat(), billing_frequency="monthly",
                   currency=currency, new_total_cost_minor=new_cost)
    issued = None
    if credit.amount_minor > 0:
        issued = event(Topic.CREDIT_ISSUED, tenant, f"{upgrade_id}:credit", occurred_at=when,
                       credit_id=f"{upgrade_id}:credit", upgrade_id=upgrade_id,
                       subscription_id=source["subscription_id"], currency=currency,
                       amount_minor=credit.amount_minor + tamper_credit, basis=credit.basis,
                       unused_days=credit.unused_days, period_days=credit.period_days,
                       period_start=credit.period_start.isoformat(), period_end=credit.period_end.isoformat(),
                       forfeit_minor=credit.forfeit_minor, due_by=(EFFECTIVE + timedelta(days=30)).isoformat())
    completed = event(Topic.UPGRADE_STATUS, tenant, f"{upgrade_id}:status:completed", occurred_at=when,
                      upgrade_id=upgrade_id, status="completed", reasons=[], credit_minor=credit.amount_minor,
                      forfeit_minor=credit.forfeit_minor, currency=currency, service_plan_resets=0,
                      new_subscription_id=request["target_subscription_id"])
    return request, switch, issued, completed


def invoices(simulator: BillingSimulator, switch, credit) -> list[dict]:
    ctx = Context(topic="", partition=0, offset=0, timestamp=0, key=None, headers={}, store=None)
    simulator.on_switch(ctx, switch)
    if credit is not None:
        simulator.on_credit(ctx, credit)
    return [o.value for o in ctx.outputs]


def archive(lake: Lake, topic: str, events: list[dict]) -> None:
    if not events:
        return
    rows = []
    for e in events:
        offset = next(_offsets)
        row = to_row(topic, 0, offset, 0, e["tenant_id"], e, "{}")
        row["_event_date"] = event_date(e)
        rows.append(row)
    lake.write(topic, 0, rows)


def build_lake(settings: Settings, upgrades: list[tuple], simulator: BillingSimulator, extra_invoices=()) -> None:
    lake = Lake.for_settings(settings)
    archive(lake, Topic.UPGRADE_REQUESTED, [u[0] for u in upgrades])
    archive(lake, Topic.BILLING_SWITCH, [u[1] for u in upgrades])
    archive(lake, Topic.CREDIT_ISSUED, [u[2] for u in upgrades if u[2] is not None])
    archive(lake, Topic.UPGRADE_STATUS, [u[3] for u in upgrades])
    archive(lake, Topic.INVOICE_ISSUED, [i for u in upgrades for i in invoices(simulator, u[1], u[2])]
            + list(extra_invoices))


@pytest.fixture
def local_settings(tmp_path) -> Settings:
    return Settings.from_env({}).with_(data_dir=tmp_path / "var")


# upgrade 1 carries the fault; upgrades 0 and 2 are clean neighbours.
FAULT_CASES = [
    # fault, check code, expected_minor, actual_minor, delta_minor
    ("overlap", "OVERLAP", 0, None, None),
    ("new-billing-gap", "NEW_BILLING_GAP", None, 0, None),
    ("missing-credit", "MISSING_CREDIT", 70000, 0, -70000),
    ("late-credit", "LATE_CREDIT", 70000, 70000, 0),
    ("wrong-amount", "AMOUNT_MISMATCH", 70000, 69900, -100),
    ("duplicate-credit", "DUPLICATE_CREDIT", 0, 70000, 70000),
    ("orphan-credit", "ORPHAN_CREDIT", 0, 500, 500),
    ("wrong-currency", "CURRENCY_MISMATCH", 70000, 70000, 0),
]


class OneUpgrade(BillingSimulator):
    """The simulator with its fault forced on one upgrade only."""

    def __init__(self, fault: str | None, target: str):
        super().__init__({})
        self.fault, self.target = fault, target

    def faulty(self, fault: str, upgrade_id: str) -> bool:
        return fault == self.fault and upgrade_id == self.target


@pytest.mark.parametrize("fault,code,expected,actual,delta", FAULT_CASES, ids=[c[1] for c in FAULT_CASES])
def test_each_check_is_raised_by_exactly_its_fault(local_settings, fault, code, expected, actual, delta):
    upgrades = [upgrade_events(n) for n in range(3)]
    build_lake(local_settings, upgrades, OneUpgrade(fault, "ord-001"))
    result = reconcile(local_settings, RUN, progress=False, chart=False)
    errors = result.findings[result.findings["severity"] == "error"]
    assert list(errors["check_code"]) == [code]
    row = errors.iloc[0]
    if code == "ORPHAN_CREDIT":  # a credit nobody issued belongs to no known upgrade
        assert pd.isna(row["upgrade_id"]) and row["credit_id"] == "ord-001:credit-from-elsewhere"
    else:
        assert row["upgrade_id"] == "ord-001"
    assert row["tenant_id"] == "t001"
    for column, value in (("expected_minor", expected), ("actual_minor", actual), ("delta_minor", delta)):
        if value is not None:
            assert row[column] == value, column
    statuses = dict(zip(result.upgrades["upgrade_id"], result.upgrades["status"]))
    assert statuses["ord-000"] == statuses["ord-002"] == "MATCHED"
    if code != "ORPHAN_CREDIT":
        assert statuses["ord-001"] == "OPEN"


def test_overlap_and_gap_amounts(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("overlap", "ord-001"))
    overlap = reconcile(local_settings, RUN, progress=False, chart=False).findings.iloc[0]
    # old plan charged [2026-11-01, 2026-11-22): 5 of its 21 days after the switch
    assert (overlap["overlap_days"], overlap["actual_minor"]) == (5, round((1000 + 21 * 100) * 5 / 21))
    assert overlap["effective_date"] == pd.Timestamp(EFFECTIVE)


def test_late_credit_counts_days_late(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("late-credit", "ord-001"))
    late = reconcile(local_settings, RUN, progress=False, chart=False).findings.iloc[0]
    assert late["days_late"] == 7 and late["due_by"] == pd.Timestamp(2026, 12, 17)


def test_a_missing_credit_is_only_pending_before_its_due_date(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("missing-credit", "ord-001"))
    early = reconcile(local_settings, date(2026, 12, 1), progress=False, chart=False)
    assert len(early.findings) == 0 and list(early.upgrades["status"]) == ["PENDING"]


def test_a_day_without_any_invoice_finds_every_overdue_credit_missing(local_settings):
    lake = Lake.for_settings(local_settings)
    upgrades = [upgrade_events(n) for n in range(2)]
    for topic, index in ((Topic.UPGRADE_REQUESTED, 0), (Topic.BILLING_SWITCH, 1), (Topic.CREDIT_ISSUED, 2),
                         (Topic.UPGRADE_STATUS, 3)):
        archive(lake, topic, [u[index] for u in upgrades])
    result = reconcile(local_settings, RUN, progress=False, chart=False)
    assert list(result.findings["check_code"]) == ["MISSING_CREDIT", "MISSING_CREDIT"]
    assert list(result.findings["delta_minor"]) == [-70000, -70000]
    assert list(result.upgrades["status"]) == ["OPEN", "OPEN"]


def test_an_issued_credit_that_breaks_the_rules_is_found(local_settings):
    build_lake(local_settings, [upgrade_events(1, tamper_credit=11)], OneUpgrade(None, ""))
    findings = reconcile(local_settings, RUN, progress=False, chart=False).findings
    mismatch = findings[findings["check_code"] == "AMOUNT_MISMATCH"]
    # the invoice matches the issued credit; the issued credit is 11 above the rules
    assert list(mismatch["expected_minor"]) == [70000] and list(mismatch["actual_minor"]) == [70011]


def test_prepaid_forfeit_is_recorded_as_info(local_settings):
    prepaid = {"term_start": "2026-01-01", "term_end": "2027-01-01", "paid_minor": 365_000}
    build_lake(local_settings, [upgrade_events(4, prepaid=prepaid, new_cost=20_000)], OneUpgrade(None, ""))
    result = reconcile(local_settings, RUN, progress=False, chart=False)
    assert list(result.findings["check_code"]) == ["PREPAID_FORFEIT"]
    assert result.findings.iloc[0]["severity"] == "info" and result.findings.iloc[0]["actual_minor"] == 25_000
    assert list(result.upgrades["status"]) == ["MATCHED"]


def test_a_fault_free_day_has_no_error_and_every_upgrade_matched(local_settings):
    upgrades = [upgrade_events(n, currency=c) for n, c in enumerate(["EUR", "USD", "JPY", "GBP"] * 5)]
    build_lake(local_settings, upgrades, BillingSimulator({}))
    result = reconcile(local_settings, RUN, progress=False, chart=True)
    assert (result.findings["severity"] == "error").sum() == 0
    assert set(result.upgrades["status"]) == {"MATCHED"} and len(result.upgrades) == 20
    assert result.chart.exists() and result.chart.read_bytes()[:4] == b"\x89PNG"


def test_outputs_are_hive_partitioned_with_the_contract_columns_and_a_rerun_is_byte_identical(local_settings):
    upgrades = [upgrade_events(n) for n in range(12)]
    build_lake(local_settings, upgrades, BillingSimulator({f: 0.3 for f in
                                                           ("overlap", "late-credit", "wrong-amount", "orphan-credit")}))
    first = reconcile(local_settings, RUN, progress=False, chart=False)
    root = first.output_dir
    files = {name: root / name / f"run_date={RUN}" / "part-0.parquet" for name in ("findings", "upgrades", "summary")}
    before = {name: path.read_bytes() for name, path in files.items()}
    again = reconcile(local_settings, RUN, progress=False, chart=False)
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


def test_events_after_the_run_date_are_left_out(local_settings):
    build_lake(local_settings, [upgrade_events(1)], OneUpgrade("overlap", "ord-001"))
    result = reconcile(local_settings, EFFECTIVE - timedelta(days=1), progress=False, chart=False)
    assert len(result.upgrades) == 0 and len(result.findings) == 0

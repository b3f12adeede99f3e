"""The nightly reconciliation's results for Prometheus, pushed to a Pushgateway.

A batch job lives too briefly to be scraped, so (as Prometheus' own guidance for batch
jobs says) it pushes its results once, at the end, to a Pushgateway that Prometheus
scrapes: each run replaces the last one's metrics. The alert rules
(`deploy/prometheus/alerts.yml`) raise a credit past due (`MISSING_CREDIT`, `LATE_CREDIT`)
and a reconciliation that stopped running.
"""

from __future__ import annotations

from datetime import datetime, time, timezone

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

JOB = "planshift-reconcile"
CHECKS = ("OVERLAP", "NEW_BILLING_GAP", "NEW_BILLING_EARLY", "MISSING_CREDIT", "LATE_CREDIT", "AMOUNT_MISMATCH",
          "DUPLICATE_CREDIT", "ORPHAN_CREDIT", "CURRENCY_MISMATCH", "PREPAID_FORFEIT")
STATUSES = ("MATCHED", "OPEN", "PENDING")


def registry_of(result) -> CollectorRegistry:
    """The gauges of one run: findings and their deltas per check and currency, upgrades per status."""
    registry = CollectorRegistry()
    findings = Gauge("planshift_reconciliation_findings", "findings of the last reconciliation, by check",
                     ["check"], registry=registry)
    by_currency = Gauge("planshift_reconciliation_findings_by_currency", "findings of the last reconciliation, "
                        "by check and currency", ["check", "currency"], registry=registry)
    delta = Gauge("planshift_reconciliation_delta_minor_units", "invoiced minus owed, in minor units, by check and "
                  "currency", ["check", "currency"], registry=registry)
    upgrades = Gauge("planshift_reconciliation_upgrades", "completed upgrades reconciled, by status", ["status"],
                     registry=registry)
    for check in CHECKS:  # every check present, at zero when it found nothing, so alerts can compare
        findings.labels(check).set(0)
    for row in result.summary.itertuples(index=False):
        currency = row.currency or "-"
        findings.labels(row.check_code).inc(int(row.count))
        by_currency.labels(row.check_code, currency).set(int(row.count))
        delta.labels(row.check_code, currency).set(int(row.delta_minor))
    counts = result.upgrades["status"].value_counts() if len(result.upgrades) else {}
    for status in STATUSES:
        upgrades.labels(status).set(int(counts.get(status, 0)))
    Gauge("planshift_reconciliation_run_date_timestamp_seconds", "the run date reconciled (its midnight, UTC)",
          registry=registry).set(datetime.combine(result.run_date, time(), timezone.utc).timestamp())
    Gauge("planshift_reconciliation_duration_seconds", "how long the last reconciliation took",
          registry=registry).set(result.seconds)
    Gauge("planshift_reconciliation_last_success_timestamp_seconds", "when the last reconciliation finished",
          registry=registry).set_to_current_time()
    return registry


def push(url: str, result) -> None:
    """Replace the job's metrics on the Pushgateway at `url` with this run's."""
    push_to_gateway(url, job=JOB, registry=registry_of(result), timeout=30)

"""`/metrics`, `/healthz` and `/readyz` of a running processor (docs/RUNBOOK.md has the table).

One small HTTP server per process, on `PLANSHIFT_METRICS_PORT` (or `--metrics-port`), on a
thread of its own. `/metrics` is Prometheus' text format, made by `prometheus-client` from
the processor's own counters (`metrics.py`) at the moment of the scrape; `/healthz` says
whether the loop is alive (it came round within `max.poll.interval.ms`), `/readyz` whether
the processor can do its work (it joined its group and every assigned partition's state
is restored). Both answer JSON, 200 when true and 503 when not.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from planshift.logs import get_logger
from planshift.runtime.metrics import Histogram, Metrics

if TYPE_CHECKING:
    from planshift.runtime.processor import StreamProcessor

log = get_logger(__name__)

# Outcomes counted per committed transaction (metrics.tally_output): name → (metric, help, label).
OUTCOMES = {
    "upgrades": ("planshift_upgrades", "upgrade.status events emitted, by status", "status"),
    "batches": ("planshift_batches_migrated", "licence-migration batches finished, by outcome", "outcome"),
    "users_migrated": ("planshift_users_migrated", "users moved to their new plan", None),
    "credits": ("planshift_credits_issued", "credit.issued events emitted, by currency", "currency"),
    "credited_minor": ("planshift_credited_minor_units",
                       "credited amounts in minor units (cents), by currency", "currency"),
    "billing_switches": ("planshift_billing_switches", "billing.switch events emitted", None),
    "dead_letters": ("planshift_dead_letters", "records dead-lettered, by source topic", "topic"),
}
# The consumers' own gauges (ProcessorConfig.gauges): name → (metric, help, label).
GAUGES = {
    "in_flight": ("planshift_upgrades_in_flight", "upgrades not yet final, by status", "status"),
    "oldest_in_flight_s": ("planshift_upgrade_oldest_in_flight_seconds",
                           "how long the oldest upgrade in each status has been in it", "status"),
}


class ProcessorCollector:
    """Reads a processor's counters at scrape time (nothing is kept twice)."""

    def __init__(self, processor: "StreamProcessor"):
        self.processor = processor

    def collect(self) -> Iterator[Metric]:
        processor = self.processor
        group = processor.engine.group
        m: Metrics = processor.metrics

        def counter(name: str, help: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, help, labels=["group"])
            family.add_metric([group], value)
            return family

        records = CounterMetricFamily("planshift_records", "records handled, by topic (again after an abort)",
                                      labels=["group", "topic"])
        for topic, count in dict(m.records_by_topic).items():
            records.add_metric([group, topic], count)
        yield records
        yield counter("planshift_retries", "handler attempts that failed and were tried again", m.retries)
        yield counter("planshift_transactions_committed", "Kafka transactions committed", m.commits)
        yield counter("planshift_transactions_aborted", "Kafka transactions aborted or abandoned", m.aborts)
        yield counter("planshift_timers_fired", "timers that came due and fired", m.timers_fired)
        yield counter("planshift_state_restored_keys", "keys restored into state stores", m.restored_keys)
        yield counter("planshift_state_expired_keys", "state keys deleted when they expired", m.expired_keys)
        rebalances = CounterMetricFamily("planshift_rebalances", "partitions assigned, revoked or lost, by event",
                                         labels=["group", "event"])
        for event in ("assigned", "revoked", "lost"):
            rebalances.add_metric([group, event], m.rebalances.get(event, 0))
        yield rebalances

        outcomes = dict(m.outcomes)
        families: dict[str, CounterMetricFamily] = {}
        for key, (name, help, label) in OUTCOMES.items():
            families[key] = CounterMetricFamily(name, help, labels=["group"] + ([label] if label else []))
        for (key, label), amount in outcomes.items():
            family = families.get(key)
            if family is not None:
                family.add_metric([group] + ([label] if OUTCOMES[key][2] else []), amount)
        for topic in processor.config_topics():  # a zero for each source without any, so rate() has a start
            if ("dead_letters", topic) not in outcomes:
                families["dead_letters"].add_metric([group, topic], 0)
        yield from families.values()

        yield _histogram("planshift_commit_duration_seconds", "time to commit a transaction (offsets and all)",
                         group, {(): m.commit_seconds}, [])
        yield _histogram("planshift_handler_duration_seconds", "time the rules took per record, by topic",
                         group, {(t,): h for t, h in dict(m.handler_seconds).items()}, ["topic"])
        yield _histogram("planshift_state_restore_duration_seconds", "time from a restore's start to its store "
                         "being whole", group, {(): m.restores}, [])

        lag = GaugeMetricFamily("planshift_consumer_lag", "records between the consumer's position and the end of "
                                "the partition", labels=["group", "topic", "partition"])
        for (topic, partition), behind in sorted(dict(m.lag).items()):
            lag.add_metric([group, topic, str(partition)], behind)
        yield lag
        health = processor.health()
        ready = processor.readiness()
        assigned = GaugeMetricFamily("planshift_partitions_assigned", "partitions of the group's topics this "
                                     "process holds", labels=["group"])
        assigned.add_metric([group], ready["partitions"])
        yield assigned
        readiness = GaugeMetricFamily("planshift_ready", "1 when /readyz says ready", labels=["group"])
        readiness.add_metric([group], 1 if ready["ready"] else 0)
        yield readiness
        since = GaugeMetricFamily("planshift_loop_seconds_since_round", "seconds since the loop last came round",
                                  labels=["group"])
        since.add_metric([group], health["seconds_since_round"])
        yield since

        gauges: dict[str, GaugeMetricFamily] = {}
        for key, (name, help, label) in GAUGES.items():
            gauges[key] = GaugeMetricFamily(name, help, labels=["group", label])
        for (key, label), value in dict(m.gauges).items():
            if key in gauges:
                gauges[key].add_metric([group, label], value)
        if processor.config.gauges is not None:  # only consumers that measure some
            yield from gauges.values()


def _histogram(name: str, help: str, group: str, histograms: dict[tuple, Histogram], labels: list[str]
               ) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help, labels=["group", *labels])
    for values, histogram in histograms.items():
        family.add_metric([group, *values], histogram.cumulative(), histogram.sum)
    return family


class TelemetryServer:
    """The HTTP server of one process: /metrics, /healthz, /readyz."""

    def __init__(self, processor: "StreamProcessor", port: int, host: str = "0.0.0.0"):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProcessorCollector(processor))
        ProcessCollector(registry=self.registry)  # RSS, CPU seconds, open files of this process
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    state = processor.health() if path == "/healthz" else processor.readiness()
                    good = state["alive"] if path == "/healthz" else state["ready"]
                    self._answer(200 if good else 503, json.dumps(state).encode() + b"\n", "application/json")
                else:
                    self._answer(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args) -> None:  # scrapes every few seconds: not worth a line
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="planshift-telemetry", daemon=True)

    def start(self) -> "TelemetryServer":
        self._thread.start()
        log.info("metrics and health served", port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

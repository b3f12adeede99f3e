"""One frozen settings object, read from the environment (CONTRACT.md §9).

`Settings.from_env()` is called once at the edge (the CLI, a test fixture) and the
object is handed to every part; nothing else reads `os.environ`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

PREPAID_POLICIES = ("checkout_rule", "block")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


class SettingsError(ValueError):
    """A configuration variable has a value planshift cannot use."""


def _default_kafka_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "planshift" / "kafka"


@dataclass(frozen=True)
class Quota:
    """A licence API's write quota per tenant: at most `calls` in any `window_s` seconds."""
    calls: int = 3000
    window_s: float = 150.0

    @classmethod
    def parse(cls, text: str) -> "Quota":
        """`CALLS/SECONDS`, e.g. `3000/150`."""
        calls, _, seconds = text.partition("/")
        try:
            quota = cls(int(calls), float(seconds or 1))
        except ValueError:
            raise ValueError(f"{text!r} is not a quota: CALLS/SECONDS, e.g. 3000/150") from None
        if quota.calls < 1 or quota.window_s <= 0:
            raise ValueError(f"{text!r}: calls and seconds must be above zero")
        return quota

    @property
    def per_second(self) -> float:
        return self.calls / self.window_s

    def __str__(self) -> str:
        return f"{self.calls}/{self.window_s:g}"


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    data_dir: Path = Path("./var")
    # The licence directory: None (the default) for the embedded SQLite file under
    # data_dir, one host only; postgresql://… for a PostgreSQL database shared by hosts.
    directory_url: str | None = field(default=None, repr=False)
    # With an http(s):// directory URL (a licence API): each tenant's write quota, CALLS/SECONDS
    # (Graph: about 3000/150), that planshift paces its calls to; None: not paced (429s waited out).
    licence_api_quota: str | None = None
    licence_api_concurrency: int = 4  # calls of one batch in flight at once
    catalogue_path: Path | None = None  # None: the shipped catalogue
    batch_size: int = 500
    credit_check_threshold_minor: int = 1_000_000
    prepaid_policy: str = "checkout_rule"
    credit_check_expiry_days: int = 10  # business days an unanswered credit check waits (CONTRACT.md §9 r2)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    # Partition count shared by the co-partitioned tenant-keyed topics (CONTRACT.md §2).
    tenant_partitions: int = 6
    batch_partitions: int = 12
    replication_factor: int = 1
    # Beyond the contract: a prefix put before every topic name, so several
    # environments (or tests) can share one cluster. Empty in production.
    topic_prefix: str = ""
    # Beyond the contract: where the Apache Kafka jars are cached (outside the work tree).
    kafka_cache_dir: Path = field(default_factory=_default_kafka_cache)
    kafka_version: str = "4.1.1"
    log_level: str = "INFO"
    # Check every event a consumer emits against its schema before sending it. The
    # tests run with it on; in production the outputs are built from validated inputs,
    # and the checks would cost intake much of its throughput (bench/README.md).
    validate_outputs: bool = False
    # How long a consumer's transaction stays open under load before it commits (an
    # idle consumer commits at once). Longer: fewer commits, more throughput; outputs
    # become visible to read_committed readers up to this much later. None: each
    # consumer's own default (intake 1000 ms, the others 200 ms).
    commit_interval_ms: int | None = None
    # The runtime's sends go straight into kafka-python's open record batches
    # (`planshift/kafka/fastpath.py`, which uses its private parts). Off
    # (PLANSHIFT_FAST_SENDS=0): the public `KafkaProducer.send`, slower but safe from a
    # kafka-python upgrade that changes those parts.
    fast_sends: bool = True
    # Beyond the contract (issue 14): the port of /metrics, /healthz and /readyz of every
    # long-running process (None: not served; 0: any free port), and the Prometheus
    # Pushgateway the nightly reconciliation pushes its findings to (None: not pushed).
    metrics_port: int | None = None
    pushgateway_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        def get_int(name: str, default: int, minimum: int = 1) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not an integer") from None
            if value < minimum:
                raise SettingsError(f"{name}={value} must be at least {minimum}")
            return value

        catalogue = get("PLANSHIFT_CATALOGUE")
        settings = cls(
            bootstrap_servers=get("PLANSHIFT_BOOTSTRAP_SERVERS") or defaults.bootstrap_servers,
            data_dir=Path(get("PLANSHIFT_DATA_DIR") or defaults.data_dir),
            directory_url=get("PLANSHIFT_DIRECTORY_URL") or None,
            licence_api_quota=get("PLANSHIFT_LICENCE_API_QUOTA"),
            licence_api_concurrency=get_int("PLANSHIFT_LICENCE_API_CONCURRENCY", defaults.licence_api_concurrency, 1),
            catalogue_path=Path(catalogue) if catalogue else None,
            batch_size=get_int("PLANSHIFT_BATCH_SIZE", defaults.batch_size),
            credit_check_threshold_minor=get_int(
                "PLANSHIFT_CREDIT_CHECK_THRESHOLD_MINOR", defaults.credit_check_threshold_minor, 0
            ),
            prepaid_policy=get("PLANSHIFT_PREPAID_POLICY") or defaults.prepaid_policy,
            credit_check_expiry_days=get_int("PLANSHIFT_CREDIT_CHECK_EXPIRY_DAYS", defaults.credit_check_expiry_days),
            security_protocol=(get("PLANSHIFT_SECURITY_PROTOCOL") or defaults.security_protocol).upper(),
            sasl_mechanism=get("PLANSHIFT_SASL_MECHANISM"),
            sasl_username=get("PLANSHIFT_SASL_USERNAME"),
            sasl_password=get("PLANSHIFT_SASL_PASSWORD"),
            ssl_cafile=get("PLANSHIFT_SSL_CAFILE"),
            tenant_partitions=get_int("PLANSHIFT_TENANT_PARTITIONS", defaults.tenant_partitions),
            batch_partitions=get_int("PLANSHIFT_BATCH_PARTITIONS", defaults.batch_partitions),
            replication_factor=get_int("PLANSHIFT_REPLICATION_FACTOR", defaults.replication_factor),
            topic_prefix=get("PLANSHIFT_TOPIC_PREFIX") or "",
            kafka_cache_dir=Path(get("PLANSHIFT_KAFKA_CACHE") or defaults.kafka_cache_dir),
            kafka_version=get("PLANSHIFT_KAFKA_VERSION") or defaults.kafka_version,
            log_level=(get("PLANSHIFT_LOG_LEVEL") or defaults.log_level).upper(),
            validate_outputs=(get("PLANSHIFT_VALIDATE_OUTPUTS") or "0").lower() in ("1", "true", "yes"),
            commit_interval_ms=(get_int("PLANSHIFT_COMMIT_INTERVAL_MS", 0)
                                if get("PLANSHIFT_COMMIT_INTERVAL_MS") else None),
            fast_sends=(get("PLANSHIFT_FAST_SENDS") or "1").lower() not in ("0", "false", "no"),
            metrics_port=get_int("PLANSHIFT_METRICS_PORT", 0, 0) if get("PLANSHIFT_METRICS_PORT") else None,
            pushgateway_url=get("PLANSHIFT_PUSHGATEWAY_URL"),
        )
        settings.validate()
        return settings

    @property
    def licence_api_quota_per_s(self) -> float | None:
        """The per-tenant write calls a second of the licence API planshift migrates through
        (PLANSHIFT_DIRECTORY_URL http(s):// with PLANSHIFT_LICENCE_API_QUOTA), else None."""
        if not self.licence_api_quota or not (self.directory_url or "").startswith(("http://", "https://")):
            return None
        return Quota.parse(self.licence_api_quota).per_second

    def validate(self) -> None:
        if self.prepaid_policy not in PREPAID_POLICIES:
            raise SettingsError(
                f"PLANSHIFT_PREPAID_POLICY={self.prepaid_policy!r} must be one of {', '.join(PREPAID_POLICIES)}"
            )
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise SettingsError(
                f"PLANSHIFT_SECURITY_PROTOCOL={self.security_protocol!r} must be one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise SettingsError("PLANSHIFT_SASL_MECHANISM is required with a SASL security protocol")
        if self.directory_url is not None and not self.directory_url.startswith(
                ("postgresql://", "postgres://", "http://", "https://")):
            raise SettingsError("PLANSHIFT_DIRECTORY_URL must be a postgresql://user:password@host:port/database URL "
                                "or a licence API's http(s)://host:port URL (unset: the embedded SQLite directory "
                                "under PLANSHIFT_DATA_DIR)")
        if self.licence_api_quota is not None:
            try:
                Quota.parse(self.licence_api_quota)
            except ValueError as exc:
                raise SettingsError(f"PLANSHIFT_LICENCE_API_QUOTA: {exc}") from None
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"PLANSHIFT_METRICS_PORT={self.metrics_port} must be a port number (0: any free port)")
        if self.pushgateway_url is not None and not self.pushgateway_url.startswith(("http://", "https://")):
            raise SettingsError("PLANSHIFT_PUSHGATEWAY_URL must be an http(s):// URL of a Prometheus Pushgateway")
        host, _, port = self.bootstrap_servers.split(",")[0].rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(
                f"PLANSHIFT_BOOTSTRAP_SERVERS={self.bootstrap_servers!r} must be host:port[,host:port…]"
            )

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    def topic(self, name: str) -> str:
        """The Kafka name of a contract topic (`Topic.*` or a `.dlq` name)."""
        return f"{self.topic_prefix}{name}"

    def kafka_client_config(self) -> dict[str, Any]:
        """The settings every kafka-python client gets: servers and security."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password
        if self.ssl_cafile:
            config["ssl_cafile"] = self.ssl_cafile
        return config

    @property
    def bootstrap_host_port(self) -> tuple[str, int]:
        host, _, port = self.bootstrap_servers.split(",")[0].rpartition(":")
        return host, int(port)

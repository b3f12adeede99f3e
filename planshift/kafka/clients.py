"""The one place that builds kafka-python clients, so every client gets the same settings.

Only kafka-python's public API is used here; its private parts, for the runtime's hot
path, are quarantined in `planshift/kafka/fastpath.py`.

Every consumer reads `read_committed` (kafka-python defaults to `read_uncommitted`,
which would show records of aborted transactions) with the cooperative-sticky
assignor (a rebalance moves only the partitions that must move) and with
auto-commit off (offsets are committed inside the producer's transaction).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

from planshift.settings import Settings


class BrokerUnreachable(ConnectionError):
    pass


class BrokerRefused(ConnectionError):
    """The broker answers but will not let this client in: TLS, protocol or credentials."""


def require_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when nothing listens at the bootstrap servers, or when the
    broker there will not let this client in (wrong protocol, untrusted certificate, wrong
    user or password): kafka-python would retry its bootstrap for the whole request
    timeout and only log why."""
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        except OSError:
            continue
        try:
            _check_protocol(settings, sock, host, int(port), timeout)
        finally:
            sock.close()
        if settings.sasl_mechanism:
            _check_credentials(settings, host, int(port), timeout)
        return
    raise BrokerUnreachable(f"no Kafka broker answers at {settings.bootstrap_servers} "
                            "(start one with 'planshift broker start')")


# ApiVersions v0, the first request of every Kafka client: it works before any authentication.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 0x504C4E53, 9) + b"planshift"


def _check_protocol(settings: Settings, sock: socket.socket, host: str, port: int, timeout: float) -> None:
    where = f"{host}:{port}"
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
        try:
            context.wrap_socket(sock, server_hostname=host).close()
        except ssl.SSLCertVerificationError as exc:
            raise BrokerRefused(f"the broker's TLS certificate at {where} is not trusted "
                                f"({exc.verify_message}): PLANSHIFT_SSL_CAFILE="
                                f"{settings.ssl_cafile or '(the system CAs)'} did not sign it for {host}") from None
        except (ssl.SSLError, OSError) as exc:
            raise BrokerRefused(f"no TLS at {where} ({exc.__class__.__name__}): the broker does not expect "
                                f"PLANSHIFT_SECURITY_PROTOCOL={settings.security_protocol}") from None
        return
    # Plain bytes: a Kafka listener without TLS answers ApiVersions; one with TLS hangs up.
    try:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS)
        header = sock.recv(8)
    except OSError:
        header = b""
    if len(header) < 8 or struct.unpack(">i", header[4:8])[0] != 0x504C4E53:
        raise BrokerRefused(f"the broker at {where} did not answer PLANSHIFT_SECURITY_PROTOCOL="
                            f"{settings.security_protocol}: it expects TLS (set SASL_SSL or SSL, with "
                            "PLANSHIFT_SSL_CAFILE and PLANSHIFT_SASL_*)")


class _Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _check_credentials(settings: Settings, host: str, port: int, timeout: float) -> None:
    """One login with the configured user, made by `planshift.kafka.sasl`; for a mechanism
    it does not speak, or when its exchange breaks off, one short kafka-python bootstrap,
    whose log is read for the reason (kafka-python logs, not raises, why a login failed)."""
    from planshift.kafka import sasl

    verdict = sasl.login(settings, host, port, timeout=timeout)
    if verdict is not None:
        if not verdict.accepted:
            raise BrokerRefused(_refused(settings, verdict.offered))
        return
    from kafka.errors import KafkaError

    kafka_log = logging.getLogger("kafka")
    seen, level, propagate = _Seen(), kafka_log.level, kafka_log.propagate
    kafka_log.addHandler(seen)
    kafka_log.setLevel(logging.ERROR)
    kafka_log.propagate = False
    _fixed()
    try:
        probe = KafkaAdminClient(**settings.kafka_client_config(), client_id="planshift-probe",
                                 request_timeout_ms=5000, bootstrap_timeout_ms=5000)
        probe.close()
    except KafkaError:
        failed = next((m for m in seen.messages if "AuthenticationFailed" in m or "Authentication failed" in m), None)
        if failed is not None:
            raise BrokerRefused(_refused(settings)) from None
        raise
    finally:
        kafka_log.removeHandler(seen)
        kafka_log.setLevel(level)
        kafka_log.propagate = propagate


def _refused(settings: Settings, offered: tuple[str, ...] | None = None) -> str:
    if offered is not None:
        return (f"the broker does not offer PLANSHIFT_SASL_MECHANISM={settings.sasl_mechanism} "
                f"(it offers {', '.join(offered) or 'no SASL mechanism'})")
    return (f"authentication failed for PLANSHIFT_SASL_USERNAME={settings.sasl_username!r} with "
            f"{settings.sasl_mechanism}: wrong user or password")


def _fixed() -> None:
    """kafka-python 3.0.x work-arounds every client needs (`planshift/kafka/fastpath.py`)."""
    from planshift.kafka import fastpath

    fastpath.install_eof_fix()  # else a refused login most often reads as "socket disconnected"


def admin(settings: Settings, **overrides: Any) -> KafkaAdminClient:
    _fixed()
    config = {**settings.kafka_client_config(), "client_id": "planshift-admin", **overrides}
    return KafkaAdminClient(**config)


def consumer(settings: Settings, group_id: str | None, *topics: str, **overrides: Any) -> KafkaConsumer:
    _fixed()
    config = {
        **settings.kafka_client_config(),
        "group_id": group_id,
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "partition_assignment_strategy": [CooperativeStickyAssignor],
        "client_id": f"planshift-{group_id or 'reader'}",
        **overrides,
    }
    return KafkaConsumer(*topics, **config)


def producer(settings: Settings, transactional_id: str | None = None, **overrides: Any) -> KafkaProducer:
    """An idempotent producer; transactional when `transactional_id` is given."""
    _fixed()
    config = {
        **settings.kafka_client_config(),
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "client_id": f"planshift-{transactional_id or 'producer'}",
        **overrides,
    }
    if transactional_id is not None:
        config["transactional_id"] = transactional_id
        from planshift.kafka import fastpath

        fastpath.install_flush_fix()  # kafka-python 3.0.x: no linger_ms after the first commit without it
    return KafkaProducer(**config)




class PublicSends:
    """The runtime's sends through the public `KafkaProducer.send`: what the runtime uses
    with PLANSHIFT_FAST_SENDS=0, and the reference `fastpath.FastSends` is checked against.
    The same three calls as `FastSends`."""

    def __init__(self, producer: KafkaProducer):
        self._producer = producer

    def begin(self) -> None:
        """A new transaction (the producer adds each partition to it on its first send)."""

    def partition_count(self, topic: str) -> int:
        return len(self._producer.partitions_for(topic))

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
             partition: int | None = None) -> None:
        self._producer.send(topic, key=key, value=value, headers=headers, partition=partition)

"""The one place that builds kafka-python clients, so every client gets the same settings.

Only kafka-python's public API is used here; its private parts, for the runtime's hot
path, are quarantined in `planshift/kafka/fastpath.py`.

Every consumer reads `read_committed` (kafka-python defaults to `read_uncommitted`,
which would show records of aborted transactions) with the cooperative-sticky
assignor (a rebalance moves only the partitions that must move) and with
auto-commit off (offsets are committed inside the producer's transaction).
"""

from __future__ import annotations

import socket
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

from planshift.settings import Settings


class BrokerUnreachable(ConnectionError):
    pass


def require_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when nothing listens at the bootstrap servers.

    kafka-python would otherwise retry its bootstrap for the whole request timeout.
    """
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            return
        except OSError:
            continue
    raise BrokerUnreachable(f"no Kafka broker answers at {settings.bootstrap_servers} "
                            "(start one with 'planshift broker start')")


def admin(settings: Settings, **overrides: Any) -> KafkaAdminClient:
    config = {**settings.kafka_client_config(), "client_id": "planshift-admin", **overrides}
    return KafkaAdminClient(**config)


def consumer(settings: Settings, group_id: str | None, *topics: str, **overrides: Any) -> KafkaConsumer:
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

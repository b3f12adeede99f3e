"""The one place that builds kafka-python clients, so every client gets the same settings.

Every consumer reads `read_committed` (kafka-python defaults to `read_uncommitted`,
which would show records of aborted transactions) with the cooperative-sticky
assignor (a rebalance moves only the partitions that must move) and with
auto-commit off (offsets are committed inside the producer's transaction).
"""

from __future__ import annotations

import socket

import orjson
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

from planshift.settings import Settings


def _patch_lost_join() -> None:
    """Work around a kafka-python 3.0.x race that leaves a consumer without partitions.

    When `poll()` times out while a JoinGroup/SyncGroup round is in flight, the round
    is kept as `_join_task` for the next poll to collect. But if that round was started
    because the metadata changed (not by `request_rejoin()`), the leader's own
    assignment step makes `need_rejoin()` false, the next poll never enters the join
    loop, and the assignment is silently dropped: the member stays in the group with
    no partitions and the group never rebalances again. Treating a join in flight as
    "rejoin needed" makes the next poll collect it (or redo it), as intended.
    """
    from kafka.coordinator.consumer import ConsumerCoordinator

    if getattr(ConsumerCoordinator, "_planshift_patched", False):
        return
    original = ConsumerCoordinator.need_rejoin

    def need_rejoin(self):
        if getattr(self, "_join_task", None) is not None:
            return True
        return original(self)

    ConsumerCoordinator.need_rejoin = need_rejoin
    ConsumerCoordinator._planshift_patched = True


_patch_lost_join()


def encode_json(value: Any) -> bytes:
    # Compact, UTF-8 and key-ordered: the same event always has the same bytes.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def encode_key(key: str | None) -> bytes | None:
    return None if key is None else key.encode()


def event_headers(event_type: str, schema_version: int = 1) -> list[tuple[str, bytes]]:
    return [("event_type", event_type.encode()), ("schema_version", str(schema_version).encode())]


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

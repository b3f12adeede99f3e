"""Logs are one JSON object per line with bound context; kafka-python's logs go the same way."""

from __future__ import annotations

import io
import json
import logging

import structlog

from planshift import logs


def test_json_lines_with_bound_context():
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    try:
        with structlog.contextvars.bound_contextvars(tenant_id="contoso", upgrade_id="ord-1",
                                                     topic="upgrade.requested", partition=3, offset=42):
            logs.get_logger("planshift.test").info("upgrade accepted", batches=2)
        logging.getLogger("kafka.conn").warning("broker connection lost")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "upgrade accepted" and lines[0]["batches"] == 2
    assert {k: lines[0][k] for k in ("tenant_id", "upgrade_id", "topic", "partition", "offset")} == {
        "tenant_id": "contoso", "upgrade_id": "ord-1", "topic": "upgrade.requested", "partition": 3, "offset": 42}
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert lines[1]["event"] == "broker connection lost" and lines[1]["logger"] == "kafka.conn"
    assert "tenant_id" not in lines[1]  # the context ended with the block


def test_lines_name_the_record_in_hand_until_it_is_released():
    from kafka.consumer.fetcher import ConsumerRecord

    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    record = ConsumerRecord("upgrade.requested", 3, 0, 42, 0, 0, b"contoso", b"{}", [], None, 7, 2, -1)
    try:
        logs.hold_record(record, {"tenant_id": "contoso", "upgrade_id": "ord-1"})
        logs.get_logger("planshift.test").info("upgrade accepted", offset="given wins")
        logs.hold_record(record, ValueError("not decoded"))
        logs.get_logger("planshift.test").info("dead-lettered")
        logs.hold_record(None)
        logs.get_logger("planshift.test").info("idle")
    finally:
        logs.hold_record(None)
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    first, invalid, idle = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {k: first[k] for k in ("tenant_id", "upgrade_id", "topic", "partition", "offset")} == {
        "tenant_id": "contoso", "upgrade_id": "ord-1", "topic": "upgrade.requested", "partition": 3,
        "offset": "given wins"}
    assert invalid["offset"] == 42 and "tenant_id" not in invalid
    assert not {"topic", "partition", "offset"} & set(idle)

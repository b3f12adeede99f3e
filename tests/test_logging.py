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


def test_no_line_carries_a_credential_and_people_are_hashed_not_dropped():
    stream = io.StringIO()
    logs.register_secret("Pa55-w0rd-of-intake")
    logs.configure("INFO", stream=stream)
    try:
        log = logs.get_logger("planshift.test")
        log.info("moved Alice@Contoso.com", users_missing=["alice@contoso.com", "u-0001"], users_swept=3,
                 directory="postgresql://planshift:db-secret@db:5432/planshift", sasl_password="Pa55-w0rd-of-intake",
                 config={"ssl_cafile": "/ca.pem", "sasl_plain_password": "Pa55-w0rd-of-intake"})
        logging.getLogger("kafka.conn").error("auth failed with password=Pa55-w0rd-of-intake for bob@fabrikam.com")
        try:
            raise ValueError("user carol@contoso.com holds it twice (secret Pa55-w0rd-of-intake)")
        except ValueError:
            log.exception("import failed")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    for leaked in ("Pa55-w0rd-of-intake", "db-secret", "@contoso.com", "@fabrikam.com", "u-0001"):
        assert leaked not in text, leaked
    first, kafka_line, failure = (json.loads(line) for line in text.splitlines())
    alice = logs.pseudonym("alice@contoso.com")
    assert first["event"] == f"moved {alice}" and first["users_missing"] == [alice, logs.pseudonym("u-0001")]
    assert first["users_swept"] == 3  # a count stays a count
    assert first["directory"] == "postgresql://planshift:[redacted]@db:5432/planshift"
    assert first["sasl_password"] == "[redacted]" and first["config"]["sasl_plain_password"] == "[redacted]"
    assert first["config"]["ssl_cafile"] == "/ca.pem"
    assert logs.pseudonym("bob@fabrikam.com") in kafka_line["event"] and "[redacted]" in kafka_line["event"]
    assert logs.pseudonym("carol@contoso.com") in failure["exception"]

"""Fuzzing every consumer with what a broken or hostile producer could send (issue 12).

For every topic planshift consumes — intake's, migration's, settlement's, the archiver's
and the billing simulator's — hypothesis sends records made from the topic's own schema
example, broken in every way a producer can break them (fields missing, of the wrong type,
unknown enum values, huge strings and arrays, deep nesting, extra fields, nulls), and raw
bytes (not JSON, invalid UTF-8, empty, null, arrays), with keys that are null, empty or not
UTF-8, interleaved with valid records. On the runtime's own engine (the test driver), with
a real embedded directory and a real lake:

- no record crashes the consumer;
- every record that breaks its schema (or §3's rules beyond it) is dead-lettered, with the
  headers of CONTRACT.md §7 naming where it came from and why;
- no record that is not dead-lettered breaks its schema: nothing invalid gets through;
- after it all, a valid record is still handled: nothing stalls.

The same engine runs under the broker (`planshift/runtime/processor.py`), so these are the
rules the deployed consumers apply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.archive import LakeSink
from consumers.archive import config as archive_config
from consumers.intake import intake_config
from consumers.migrate import migration_config
from consumers.settle import settlement_config
from planshift.contract import Topic
from planshift.runtime.testing import TestDriver, Topics
from planshift.schema import InvalidEvent, parse, parse_json
from planshift.settings import Settings
from planshift.storage.directory import SqliteDirectory
from planshift.storage.lake import Lake
from producers.billing import billing_config

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"
DLQ_HEADERS = {"dlq.source.topic", "dlq.source.partition", "dlq.source.offset", "dlq.source.timestamp",
               "dlq.consumer.group", "dlq.error.class", "dlq.error.message", "dlq.attempts"}


def example(topic: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{topic}.json").read_text())


def consumer(name: str, tmp: Path) -> TestDriver:
    """One of the consumers planshift runs, on its own driver, directory and lake."""
    base = Settings.from_env({}).with_(data_dir=tmp / "var", batch_size=10)
    base.data_dir.mkdir(parents=True, exist_ok=True)
    fast = {"retry_backoff_s": 0}
    make = {
        "intake": lambda: intake_config(base, SqliteDirectory.for_settings(base), **fast),
        "migrate": lambda: migration_config(base, SqliteDirectory.for_settings(base), **fast),
        "settle": lambda: settlement_config(base, SqliteDirectory.for_settings(base), **fast),
        "archive": lambda: archive_config(base, LakeSink(Lake.for_settings(base))),
        "billing": lambda: billing_config(base),
    }
    return TestDriver(base, make[name](), Topics(base, lambda: 1_795_000_000.0), tables={Topic.SERVICE_HEALTH: {}})


def _huge():
    return st.sampled_from(["x" * 100_000, ["x"] * 20_000, {"k" * 50: "v" * 50_000}])


def _deep():
    return st.integers(1, 200).map(lambda depth: json.loads("[" * depth + "]" * depth))


ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                       st.text(max_size=30), st.sampled_from(["", "UNKNOWN_ENUM", "2026-11-31", "-1", "NaN"]),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                           max_size=3), _huge(), _deep())


@st.composite
def broken(draw, topic: str) -> bytes | None:
    """A record value a producer could send to `topic`: mostly the example, broken somehow."""
    kind = draw(st.sampled_from(["drop", "retype", "extra", "nested", "raw", "valid"]))
    value = example(topic)
    if kind == "raw":
        return draw(st.one_of(st.none(), st.binary(max_size=300),
                              st.sampled_from([b"", b"null", b"[]", b"{}", b"\xff\xfe\xfd", b'{"a":',
                                               b'"just a string"', b"1e999", json.dumps(value).encode()[:-1]])))
    keys = sorted(value)
    if kind == "drop":
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
            value.pop(key)
    elif kind == "retype":
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True)):
            value[key] = draw(ODD_VALUES)
    elif kind == "extra":
        value[draw(st.text(min_size=1, max_size=20))] = draw(ODD_VALUES)
    elif kind == "nested":
        lists = [k for k in keys if isinstance(value[k], (list, dict))]
        if lists:
            key = draw(st.sampled_from(lists))
            value[key] = draw(st.one_of(ODD_VALUES, st.lists(ODD_VALUES, max_size=4)))
    return json.dumps(value).encode()


KEYS = st.one_of(st.none(), st.just(b""), st.text(max_size=40).map(str.encode), st.binary(max_size=20))
TOPICS = {
    "intake": (Topic.UPGRADE_REQUESTED, Topic.CREDIT_CHECK_DECIDED, Topic.UPGRADE_ENDED),
    "migrate": (Topic.LICENSE_BATCHES,),
    "settle": (Topic.LICENSE_BATCH_COMPLETED,),
    "archive": (Topic.UPGRADE_REQUESTED, Topic.UPGRADE_STATUS, Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED,
                Topic.INVOICE_ISSUED),
    "billing": (Topic.UPGRADE_REQUESTED, Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED),
}
CASES = [(name, topic) for name, topics in TOPICS.items() for topic in topics]


def is_valid(driver: TestDriver, topic: str, raw: bytes | None) -> bool:
    source = driver.engine.sources[driver.settings.topic(topic)]
    try:
        event = parse_json(raw) if source.schema == "" else parse(source.schema or topic, raw)
        if source.check is not None:
            source.check(event)
    except InvalidEvent:
        return False
    return True


@pytest.mark.parametrize("name, topic", CASES, ids=[f"{n}-{t}" for n, t in CASES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_consumer_dead_letters_what_breaks_its_schema_and_goes_on(tmp_path_factory, name, topic, data):
    driver = consumer(name, tmp_path_factory.mktemp("fuzz"))
    records = data.draw(st.lists(st.tuples(KEYS, broken(topic)), min_size=1, max_size=8), label="records")
    sent = []
    for key, value in records:
        # the driver's own records: as a producer would write them, headers and all
        record = driver.topics.append(driver.settings.topic(topic), key, value,
                                      [("event_type", topic.encode()), ("schema_version", b"1")])
        sent.append(record)
        driver.handle(record)  # must not raise, whatever the record
    dead = {int(r.header("dlq.source.offset")): r for r in driver.dead_letters(topic)}
    for record in sent:
        letter = dead.get(record.offset)
        if letter is None:
            assert is_valid(driver, topic, record.value), f"an invalid record got through: {record.value[:200]!r}"
            continue
        assert DLQ_HEADERS <= {k for k, _ in letter.headers}, letter.headers
        assert letter.value == record.value and letter.key == record.key, "the dead letter is not the record"
        assert letter.header("dlq.source.topic") == driver.settings.topic(topic)
        if not is_valid(driver, topic, record.value):
            assert letter.header("dlq.error.class") == "InvalidEvent"
    # Nothing stalls: a valid record after all that is handled, not dead-lettered.
    letters = len(driver.dead_letters(topic))
    after = example(topic)
    if topic == Topic.UPGRADE_REQUESTED:  # a valid request above may have made the example's id its tenant's
        after["upgrade_id"] = "ord-after-the-fuzz"
    valid = driver.topics.append(driver.settings.topic(topic), b"contoso", json.dumps(after).encode(),
                                 [("event_type", topic.encode()), ("schema_version", b"1")])
    driver.handle(valid)
    assert len(driver.dead_letters(topic)) == letters, driver.dead_letters(topic)[-1].headers

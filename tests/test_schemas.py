"""Each schema of schemas/ accepts its example and names every missing or ill-typed field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from planshift.catalogue import SHIPPED_CATALOGUE
from planshift.contract import TOPICS
from planshift.schema import InvalidEvent, load_schema, parse, schema_names, violations
from schemas import SCHEMA_DIR

EXAMPLES = SCHEMA_DIR / "examples"


def example(name: str) -> dict:
    if name == "catalogue":
        return json.loads(SHIPPED_CATALOGUE.read_text())
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def required_fields(schema: dict, value, path=()):
    """Every (path, field) that the schema requires, walking into objects and arrays."""
    if not isinstance(value, (dict, list)):
        return
    for key in ("oneOf", "anyOf"):
        for branch in schema.get(key, []):
            if branch.get("type") == "object" and isinstance(value, dict):
                yield from required_fields(branch, value, path)
    if isinstance(value, dict):
        for field in schema.get("required", []):
            yield path, field
        for field, sub in schema.get("properties", {}).items():
            if field in value:
                yield from required_fields(sub, value[field], (*path, field))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for field, item in value.items():
                yield from required_fields(extra, item, (*path, field))
    elif isinstance(value, list) and value and isinstance(schema.get("items"), dict):
        yield from required_fields(schema["items"], value[0], (*path, 0))


def json_path(parts) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def dig(value, parts):
    for p in parts:
        value = value[p]
    return value


CASES = [(name, path, field) for name in schema_names()
         for path, field in required_fields(load_schema(name), example(name))]


def test_every_contract_topic_has_a_schema_and_an_example():
    assert {spec.name for spec in TOPICS} | {"catalogue"} == set(schema_names())
    for name in schema_names():
        assert example(name)


@pytest.mark.parametrize("name", schema_names())
def test_schema_accepts_its_valid_example(name):
    assert violations(name, example(name)) == []


@pytest.mark.parametrize("name,path,field", CASES, ids=[f"{n}:{json_path((*p, f))}" for n, p, f in CASES])
def test_missing_required_field_is_named(name, path, field):
    broken = copy.deepcopy(example(name))
    del dig(broken, path)[field]
    found = violations(name, broken)
    assert [str(v) for v in found] == [f"{json_path((*path, field))}: required field is missing"]


def _wrong_type(value):
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "12"
    if isinstance(value, str):
        return 12
    if isinstance(value, list):
        return {"not": "a list"}
    if isinstance(value, dict):
        return ["not", "an", "object"]
    return 12  # null where a value is required


@pytest.mark.parametrize("name,path,field", CASES, ids=[f"{n}:{json_path((*p, f))}" for n, p, f in CASES])
def test_ill_typed_required_field_is_named(name, path, field):
    broken = copy.deepcopy(example(name))
    parent = dig(broken, path)
    parent[field] = _wrong_type(parent[field])
    found = violations(name, broken)
    assert found, f"{json_path((*path, field))} = {parent[field]!r} was accepted"
    assert {v.path for v in found} == {json_path((*path, field))}


def test_every_violation_is_reported_not_only_the_first():
    broken = example("upgrade.requested")
    del broken["upgrade_id"]
    broken["licenses"] = "many"
    broken["tenant"]["subscriptions"][0]["status"] = "paused"
    paths = [v.path for v in violations("upgrade.requested", broken)]
    assert paths == ["$.licenses", "$.tenant.subscriptions[0].status", "$.upgrade_id"]


def test_unknown_extra_fields_are_ignored():
    event = example("upgrade.requested")
    event["a_field_from_the_future"] = {"anything": 1}
    assert violations("upgrade.requested", event) == []


@pytest.mark.parametrize("raw,fragment", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe", "not JSON"),
    (None, "tombstone"),
])
def test_parse_refuses_what_is_not_a_json_object(raw, fragment):
    with pytest.raises(InvalidEvent) as caught:
        parse("upgrade.requested", raw)
    assert fragment in str(caught.value)


def test_wrong_event_type_is_named():
    event = example("credit.issued")
    event["event_type"] = "credit.revoked"
    assert [str(v) for v in violations("credit.issued", event)] == ["$.event_type: must be 'credit.issued'"]


def test_schema_files_are_draft_07_with_ids():
    for path in Path(SCHEMA_DIR).glob("*.schema.json"):
        schema = json.loads(path.read_text())
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema#", path.name
        assert schema["$id"].endswith(path.name)


def _integer_fields(node, path=()):
    """The path of every integer field of a schema (an array's items as index 0)."""
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
            yield path
        for key, sub in node.get("properties", {}).items():
            yield from _integer_fields(sub, (*path, key))
        if isinstance(node.get("items"), dict):
            yield from _integer_fields(node["items"], (*path, 0))


def _put(event, path, value) -> bool:
    """`value` at `path` in `event`; False where the example has no such place (an empty array)."""
    target = event
    for part in path[:-1]:
        if isinstance(part, int):
            if not isinstance(target, list) or not target:
                return False
            target = target[part]
        else:
            target = target.setdefault(part, {})
    if not isinstance(target, dict):
        return False
    target[path[-1]] = value
    return True


@pytest.mark.parametrize("name", [n for n in schema_names() if list(_integer_fields(load_schema(n)))])
def test_every_integer_is_within_what_json_carries_exactly(name):
    """An integer beyond ±(2^53 − 1) (I-JSON, RFC 7493) breaks its schema, also written as a
    float (`9.223372036854776e+18`, which JSON Schema counts as an integer): past 2^63 the
    lake's int64 columns cannot hold it, and a record the archiver cannot write would stop
    it for good (hypothesis found one in `credit_minor`)."""
    tried = 0
    for path in _integer_fields(load_schema(name)):
        for too_big in (2**53, 2**63, 9.223372036854776e18, -(2**53)):
            event = example(name)
            if _put(event, path, too_big):
                tried += 1
                assert violations(name, event), f"{name} {path} accepted {too_big!r}"
    assert tried

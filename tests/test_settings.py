"""The frozen settings object read from the environment (CONTRACT.md §9)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from planshift.settings import Settings, SettingsError


def test_defaults_are_the_contracts():
    s = Settings.from_env({})
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.data_dir == Path("./var")
    assert s.catalogue_path is None
    assert s.batch_size == 500
    assert s.credit_check_threshold_minor == 1_000_000
    assert s.prepaid_policy == "checkout_rule"
    assert s.security_protocol == "PLAINTEXT"


def test_every_variable_is_read():
    s = Settings.from_env({
        "PLANSHIFT_BOOTSTRAP_SERVERS": "kafka-1:9093,kafka-2:9093",
        "PLANSHIFT_DATA_DIR": "/srv/planshift",
        "PLANSHIFT_CATALOGUE": "/etc/planshift/catalogue.json",
        "PLANSHIFT_BATCH_SIZE": "250",
        "PLANSHIFT_CREDIT_CHECK_THRESHOLD_MINOR": "500000",
        "PLANSHIFT_PREPAID_POLICY": "block",
        "PLANSHIFT_SECURITY_PROTOCOL": "sasl_ssl",
        "PLANSHIFT_SASL_MECHANISM": "SCRAM-SHA-512",
        "PLANSHIFT_SASL_USERNAME": "planshift",
        "PLANSHIFT_SASL_PASSWORD": "s3cret",
        "PLANSHIFT_SSL_CAFILE": "/etc/ssl/ca.pem",
    })
    assert s.bootstrap_servers == "kafka-1:9093,kafka-2:9093"
    assert s.data_dir == Path("/srv/planshift")
    assert s.catalogue_path == Path("/etc/planshift/catalogue.json")
    assert (s.batch_size, s.credit_check_threshold_minor, s.prepaid_policy) == (250, 500000, "block")
    config = s.kafka_client_config()
    assert config == {
        "bootstrap_servers": ["kafka-1:9093", "kafka-2:9093"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "planshift",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": "/etc/ssl/ca.pem",
    }
    assert "s3cret" not in repr(s)


def test_security_settings_reach_every_client_kind(monkeypatch):
    from planshift.kafka import clients

    captured = {}
    for kind in ("KafkaAdminClient", "KafkaConsumer", "KafkaProducer"):
        monkeypatch.setattr(clients, kind, lambda *a, _k=kind, **kw: captured.setdefault(_k, kw))
    s = Settings.from_env({"PLANSHIFT_SECURITY_PROTOCOL": "SSL", "PLANSHIFT_SSL_CAFILE": "/ca.pem"})
    clients.admin(s)
    clients.consumer(s, "g")
    clients.producer(s, transactional_id="t")
    for kind, config in captured.items():
        assert config["security_protocol"] == "SSL" and config["ssl_cafile"] == "/ca.pem", kind


@pytest.mark.parametrize("env,fragment", [
    ({"PLANSHIFT_BATCH_SIZE": "many"}, "PLANSHIFT_BATCH_SIZE='many' is not an integer"),
    ({"PLANSHIFT_BATCH_SIZE": "0"}, "PLANSHIFT_BATCH_SIZE=0 must be at least 1"),
    ({"PLANSHIFT_PREPAID_POLICY": "refund"}, "PLANSHIFT_PREPAID_POLICY='refund' must be one of"),
    ({"PLANSHIFT_SECURITY_PROTOCOL": "TLS"}, "PLANSHIFT_SECURITY_PROTOCOL='TLS' must be one of"),
    ({"PLANSHIFT_SECURITY_PROTOCOL": "SASL_SSL"}, "PLANSHIFT_SASL_MECHANISM is required"),
    ({"PLANSHIFT_BOOTSTRAP_SERVERS": "localhost"}, "must be host:port"),
])
def test_bad_values_are_named(env, fragment):
    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(")):
        Settings.from_env(env)


def test_settings_are_frozen():
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 1  # type: ignore[misc]
    assert s.with_(batch_size=7).batch_size == 7 and s.batch_size == 500


def test_topic_prefix_applies_to_every_topic():
    s = Settings.from_env({"PLANSHIFT_TOPIC_PREFIX": "staging."})
    assert s.topic("upgrade.requested") == "staging.upgrade.requested"


def test_the_commit_interval_is_each_consumers_unless_the_environment_or_the_command_says(tmp_path):
    from consumers import intake, settle

    assert Settings.from_env({}).commit_interval_ms is None
    default = Settings.from_env({"PLANSHIFT_DATA_DIR": str(tmp_path)})  # processors are built, not run
    assert intake.processor(default).config.commit_interval_ms == 1000  # many small records: fewer commits
    assert intake.processor(default).config.commit_every == 5000
    assert settle.processor(default).config.commit_interval_ms == 200
    assert settle.processor(default).config.commit_every == 5000
    chosen = default.with_(commit_interval_ms=Settings.from_env({"PLANSHIFT_COMMIT_INTERVAL_MS": "350"})
                           .commit_interval_ms)
    assert intake.processor(chosen).config.commit_interval_ms == 350
    assert settle.processor(chosen).config.commit_interval_ms == 350
    assert intake.processor(chosen, commit_interval_ms=50).config.commit_interval_ms == 50  # --commit-interval-ms
    with pytest.raises(SettingsError, match="PLANSHIFT_COMMIT_INTERVAL_MS"):
        Settings.from_env({"PLANSHIFT_COMMIT_INTERVAL_MS": "0"})


@pytest.mark.parametrize("value, fast", [(None, True), ("1", True), ("0", False), ("false", False), ("no", False)])
def test_fast_sends_are_on_unless_switched_off(value, fast):
    env = {} if value is None else {"PLANSHIFT_FAST_SENDS": value}
    assert Settings.from_env(env).fast_sends is fast

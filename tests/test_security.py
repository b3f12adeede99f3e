"""Issue 13 against a real secured broker (`planshift broker start --secure`): SASL_SSL with
SCRAM-SHA-512 and hostname verification, one principal per role, least-privilege ACLs
enforced by Kafka's StandardAuthorizer. Each refusal is one clear line, and nothing is
written."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from datetime import date

import pytest

from consumers import intake, migrate, settle
from planshift.contract import Topic
from planshift.events import encode_json, event_headers, with_envelope
from planshift.kafka import clients
from planshift.kafka.reader import read_topic
from planshift.kafka.topics import create_topics
from planshift.ops.broker import LocalBroker, free_port
from planshift.ops.security import ADMIN_USER, ROLES, Credentials, apply_acls
from planshift.settings import Settings
from producers.samples import upgrade_request
from tests.conftest import running, seed_users, wait_for


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("planshift-secure")
    import os

    base = Settings.from_env({k: v for k, v in os.environ.items() if k in ("PLANSHIFT_KAFKA_CACHE",
                                                                           "PLANSHIFT_FAST_SENDS")})
    broker = LocalBroker(base.with_(bootstrap_servers=f"127.0.0.1:{free_port()}", data_dir=data_dir,
                                    validate_outputs=True), secure=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def secured(secure_broker, unique_name, tmp_path):
    """(credentials, settings as `role`): this test's topics, under a prefix of its own, with
    every role's ACLs for them; the settings carry no credentials until asked for a role."""
    credentials: Credentials = secure_broker.credentials()
    plain = secure_broker.settings.with_(topic_prefix=f"{unique_name('s')}.", data_dir=tmp_path / "var",
                                         security_protocol="PLAINTEXT", sasl_mechanism=None, sasl_username=None,
                                         sasl_password=None, ssl_cafile=None)
    plain.data_dir.mkdir(parents=True)
    admin = credentials.settings_for(plain, ADMIN_USER)
    apply_acls(admin)
    create_topics(credentials.settings_for(plain, ROLES["operator"].user))

    def as_role(role: str) -> Settings:
        return credentials.settings_for(plain, ROLES[role].user)

    as_role.plain = plain
    as_role.credentials = credentials
    return as_role


def requests(n: int) -> list[dict]:
    return [with_envelope(upgrade_request(f"t{i}", f"ord-{i}", today=date.today(), licenses=3), "upgrade.requested")
            for i in range(n)]


def publish(settings: Settings, topic: str, events: list[dict]) -> None:
    producer = clients.producer(settings)
    try:
        for event in events:
            producer.send(settings.topic(topic), key=event["tenant_id"].encode(), value=encode_json(event),
                          headers=event_headers(topic)).get(30)
    finally:
        producer.close()


def test_planshift_runs_end_to_end_with_each_roles_own_credentials(secured):
    for i in range(3):
        seed_users(secured.plain, f"t{i}", f"t{i}-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 3)
    publish(secured("orders"), Topic.UPGRADE_REQUESTED, requests(3))  # an order system, as itself
    with running(intake.processor(secured("intake"), commit_interval_ms=50), timeout=60), \
            running(migrate.processor(secured("migrate"), commit_interval_ms=50), timeout=60), \
            running(settle.processor(secured("settle"), commit_interval_ms=50), timeout=60):
        orders = secured("orders")  # the order system follows its statuses
        wait_for(lambda: Counter(r.value["status"] for r in read_topic(orders, orders.topic(Topic.UPGRADE_STATUS)))
                 ["completed"] == 3, 120, interval=0.5, message="three upgrades completed")
    from planshift.ops.view import StatusView

    page = StatusView(secured("status"))  # the status page, as itself: statuses, health, dead letters
    page.catch_up()
    assert page.counts()["completed"] == 3
    page.close()
    operator = secured("operator")
    assert len(read_topic(operator, operator.topic(Topic.BILLING_SWITCH))) == 3
    assert len(read_topic(operator, operator.topic(Topic.LICENSE_BATCH_COMPLETED))) == 3


def cli(settings: Settings, monkeypatch, *args: str) -> int:
    from cli import main

    for name, value in (("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers),
                        ("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix),
                        ("PLANSHIFT_DATA_DIR", str(settings.data_dir)),
                        ("PLANSHIFT_SECURITY_PROTOCOL", settings.security_protocol),
                        ("PLANSHIFT_SASL_MECHANISM", settings.sasl_mechanism),
                        ("PLANSHIFT_SASL_USERNAME", settings.sasl_username),
                        ("PLANSHIFT_SASL_PASSWORD", settings.sasl_password),
                        ("PLANSHIFT_SSL_CAFILE", settings.ssl_cafile)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return main(list(args))


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_who_cannot_authenticate_is_refused_in_one_line(secured, monkeypatch, capsys, tmp_path):
    began = time.monotonic()
    assert cli(secured.plain, monkeypatch, "tail", Topic.UPGRADE_STATUS) == 1  # no TLS, no user
    assert "expects TLS" in one_line(capsys)
    wrong = secured("intake").with_(sasl_password="not-the-password")
    assert cli(wrong, monkeypatch, "tail", Topic.UPGRADE_STATUS) == 1
    assert one_line(capsys) == ("planshift: error: authentication failed for PLANSHIFT_SASL_USERNAME="
                                "'planshift-intake' with SCRAM-SHA-512: wrong user or password")
    stranger = secured("intake").with_(sasl_username="nobody-we-know")
    assert cli(stranger, monkeypatch, "tail", Topic.UPGRADE_STATUS) == 1
    assert "authentication failed for PLANSHIFT_SASL_USERNAME='nobody-we-know'" in one_line(capsys)
    other_mechanism = secured("intake").with_(sasl_mechanism="SCRAM-SHA-256")
    assert cli(other_mechanism, monkeypatch, "tail", Topic.UPGRADE_STATUS) == 1
    assert one_line(capsys) == ("planshift: error: the broker does not offer PLANSHIFT_SASL_MECHANISM=SCRAM-SHA-256 "
                                "(it offers SCRAM-SHA-512)")
    from planshift.ops.security import make_tls

    make_tls(tmp_path / "other-tls", "127.0.0.1", "other-password")  # a CA that did not sign the broker's
    untrusted = secured("intake").with_(ssl_cafile=str(tmp_path / "other-tls" / "ca.pem"))
    assert cli(untrusted, monkeypatch, "tail", Topic.UPGRADE_STATUS) == 1
    assert "TLS certificate at" in (line := one_line(capsys)) and "is not trusted" in line
    assert time.monotonic() - began < 60  # refused at once, not after kafka-python's retries
    operator = secured("operator")
    assert read_topic(operator, operator.topic(Topic.UPGRADE_STATUS)) == []  # nobody wrote anything


def test_kafka_python_hears_the_brokers_refusal_of_a_login(secured, caplog):
    """The broker answers a refused login and closes the connection at once. kafka-python
    3.0.x dropped that answer whenever the close came in the same read (most logins here),
    and saw only "socket disconnected", so a running client never learnt it was refused;
    with `fastpath.install_eof_fix` every one of its attempts ends on the refusal."""
    import logging

    from kafka.errors import KafkaError

    wrong = secured("intake").with_(sasl_password="not-the-password")
    caplog.set_level(logging.DEBUG, logger="kafka")
    with pytest.raises(KafkaError):
        clients.admin(wrong, request_timeout_ms=3000, bootstrap_timeout_ms=3000).close()
    lost = [r.getMessage() for r in caplog.records if "Connection lost" in r.getMessage()]
    assert len(lost) >= 3, lost  # several logins: one could be lucky without the fix
    assert all("SaslAuthenticationFailedError" in m for m in lost), lost


def test_a_role_may_not_write_what_its_acls_do_not_allow_and_nothing_is_written(secured, monkeypatch, capsys,
                                                                                 tmp_path):
    from kafka.errors import KafkaError

    # intake may not bill: a transactional send of billing.switch as intake fails, and
    # nothing reaches a read_committed reader
    settings = secured("intake")
    producer = clients.producer(settings, transactional_id=settings.topic("planshift-intake-rogue"))
    producer.init_transactions()
    producer.begin_transaction()
    with pytest.raises(KafkaError) as refused:
        producer.send(settings.topic(Topic.BILLING_SWITCH), key=b"t0", value=b"{}").get(30)
        producer.commit_transaction()
    assert "Authorization" in type(refused.value).__name__
    with contextlib.suppress(KafkaError):
        producer.abort_transaction()
    producer.close(timeout=5)
    # another role's transactional ids are not intake's either
    with pytest.raises(KafkaError) as fenced_out:
        clients.producer(settings, transactional_id=settings.topic("planshift-settle-0")).init_transactions()
    assert "TransactionalIdAuthorization" in type(fenced_out.value).__name__

    # the archiver only reads (and dead-letters): it may not publish a request
    (tmp_path / "one.jsonl").write_bytes(encode_json(requests(1)[0]) + b"\n")
    assert cli(secured("archive"), monkeypatch, "publish", "upgrade-requests", str(tmp_path / "one.jsonl")) == 1
    err = capsys.readouterr().err
    assert "not authorized: User:planshift-archive may not use this topic" in err
    assert "planshift acls list" in err
    operator = secured("operator")
    assert read_topic(operator, operator.topic(Topic.BILLING_SWITCH)) == []
    assert read_topic(operator, operator.topic(Topic.UPGRADE_REQUESTED)) == []


def test_a_consumer_started_with_another_roles_credentials_stops_with_one_line(secured, monkeypatch, capsys):
    """Settlement run as the migration workers' principal: refused at start, not retried for ever."""
    assert cli(secured("migrate"), monkeypatch, "run", "settle") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("planshift: error: not authorized: User:planshift-migrate may not use"), err


def test_no_log_line_of_a_whole_upgrade_with_a_dead_letter_holds_a_secret_or_a_person(secured, tmp_path):
    """Intake, a migration worker and settlement as processes, each with its own password,
    users whose ids are e-mail addresses (as Microsoft 365's are), one of whom takes the
    source licence mid-upgrade (settlement logs the sweep), and a broken request that is
    dead-lettered. Every line they write is scanned."""
    import re
    import signal

    from planshift.logs import pseudonym
    from planshift.storage.directory import Licence, SqliteDirectory
    from tests.conftest import spawn

    plain = secured.plain
    users = [f"user{i}@contoso.com" for i in range(6)]
    directory = SqliteDirectory.for_settings(plain)
    source = "contoso-sub-m365_business_standard"
    directory.put(Licence("contoso", u, source, "M365_BUSINESS_STANDARD") for u in users)
    request = with_envelope(upgrade_request("contoso", "ord-1", today=date.today(), licenses=7), "upgrade.requested")
    # an order system that put its admin's address where the licence count goes
    broken = dict(request, upgrade_id="ord-2", licenses="admin.person@fabrikam.com", tenant_id="fabrikam")
    publish(secured("orders"), Topic.UPGRADE_REQUESTED, [broken])
    logs = {role: tmp_path / f"{role}.log" for role in ("intake", "migrate", "settle")}
    env = {"PLANSHIFT_LOG_LEVEL": "DEBUG", "PLANSHIFT_BATCH_SIZE": "2"}
    processes = [spawn(plain, path, "run", role, "--commit-interval-ms", "50",
                       **secured.credentials.environment(ROLES[role].user), **env) for role, path in logs.items()]
    operator = secured("operator")
    try:
        wait_for(lambda: read_topic(operator, operator.topic("upgrade.requested.dlq")), 60, interval=0.5,
                 message="the broken request dead-lettered")
        publish(secured("orders"), Topic.UPGRADE_REQUESTED, [request])
        wait_for(lambda: any(r.value["status"] == "migrating" for r in
                             read_topic(operator, operator.topic(Topic.UPGRADE_STATUS))), 60, interval=0.5,
                 message="migrating")
        directory.put([Licence("contoso", "late.joiner@contoso.com", source, "M365_BUSINESS_STANDARD")])
        wait_for(lambda: any(r.value["status"] == "completed" for r in
                             read_topic(operator, operator.topic(Topic.UPGRADE_STATUS))), 120, interval=0.5,
                 message="completed")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
    text = {role: path.read_text() for role, path in logs.items()}
    lines = [line for t in text.values() for line in t.splitlines()]
    assert len(lines) > 10 and all(line.startswith("{") for line in lines), "structlog JSON lines only"
    secrets = list(secured.credentials.passwords.values())
    for line in lines:
        assert not any(secret in line for secret in secrets), line
        assert not re.search(r"[A-Za-z0-9._-]+@[A-Za-z0-9-]+\.[a-z]{2,}", line), line  # no e-mail address
    # hashed, not dropped: the dead letter's line still says whose address it was
    assert "invalid record dead-lettered" in text["intake"]
    assert pseudonym("admin.person@fabrikam.com") in text["intake"]
    assert '"users_swept": 1' in text["settle"]


def test_a_rotated_password_works_at_once_and_the_old_one_no_longer(secured, monkeypatch, capsys):
    """`passwd` returns once the broker takes the new password: a process restarted with it
    right away is let in, and one still holding the old one is refused, with no wait."""
    admin = secured.credentials.settings_for(secured.plain, ADMIN_USER)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("a-new-password-for-credit\n"))
    assert cli(admin, monkeypatch, "acls", "passwd", "credit", "--stdin") == 0
    assert "planshift-credit: new password set, taken by the broker" in capsys.readouterr().out
    old = secured("credit")
    assert cli(old.with_(sasl_password="a-new-password-for-credit"), monkeypatch, "tail",
               Topic.CREDIT_CHECK_REQUESTED) == 0
    capsys.readouterr()
    assert cli(old, monkeypatch, "tail", Topic.CREDIT_CHECK_REQUESTED) == 1
    assert "authentication failed for PLANSHIFT_SASL_USERNAME='planshift-credit'" in one_line(capsys)
    # a broker that does not take the password in time is named (here: one that never will)
    from planshift.errors import OperationError
    from planshift.ops.security import _await_credential

    host, port = old.bootstrap_servers.rsplit(":", 1)
    nobody = free_port()
    with pytest.raises(OperationError, match="did not take it within 1s") as late:
        _await_credential(old, "planshift-credit", "not-what-was-set", [(host, int(port)), (host, nobody)], wait_s=1)
    assert f"{host}:{port} (still refuses it)" in str(late.value) and f"{host}:{nobody} (no answer)" in str(late.value)
    # only a super user may change passwords
    assert cli(secured("operator"), monkeypatch, "acls", "passwd", "settle") == 1
    assert "not authorized" in capsys.readouterr().err


def test_the_documented_acl_table_is_the_one_applied():
    from pathlib import Path

    from planshift.ops.security import markdown_table

    doc = (Path(__file__).resolve().parent.parent / "docs" / "SECURITY.md").read_text()
    assert markdown_table() in doc

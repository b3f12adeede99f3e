"""Shared fixtures: one real Apache Kafka broker for the whole run, unique names per test.

The broker is started through `planshift.ops.broker.LocalBroker`, the same code as
`planshift broker start`, on free ports with its data in a temporary folder, and
stopped (SIGTERM) at the end of the session.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from planshift.events import encode_json, encode_key, event_headers
from planshift.kafka.topics import create_topics
from planshift.ops.broker import LocalBroker, free_port
from planshift.settings import Settings


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.1,
             message: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def broker_settings(tmp_path_factory) -> Settings:
    """Settings pointing at the session's broker; each test derives its own from it."""
    data_dir = tmp_path_factory.mktemp("planshift-broker")
    base = Settings.from_env({k: v for k, v in os.environ.items() if k in ("PLANSHIFT_KAFKA_CACHE", "PLANSHIFT_FAST_SENDS")})
    return base.with_(bootstrap_servers=f"127.0.0.1:{free_port()}", data_dir=data_dir, validate_outputs=True)


@pytest.fixture(scope="session")
def kafka_broker(broker_settings: Settings):
    broker = LocalBroker(broker_settings)
    began = time.monotonic()
    status, started = broker.start()
    assert started, "the session broker was already running"
    broker.start_seconds = time.monotonic() - began  # reported by test_broker
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server for the session (Debian's package; `LocalPostgres`)."""
    from planshift.ops.postgres import LocalPostgres

    server = LocalPostgres().start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A database of this test's own on the session's PostgreSQL server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgres", "licence-api"])
def directory_url(request) -> str | None:
    """Each directory planshift has: None for the embedded SQLite file, else a PostgreSQL URL
    or a licence API's (the reference licence service, with a quota too large to matter)."""
    if request.param == "sqlite":
        return None
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return request.getfixturevalue("licence_api_url")


@pytest.fixture
def licence_api_url(tmp_path_factory):
    """A reference licence service (`planshift directory serve`) of this test's own."""
    from planshift.settings import Quota

    with licence_service(tmp_path_factory.mktemp("licence-api") / "directory.sqlite3", Quota(1_000_000, 1)) as url:
        yield url


@contextlib.contextmanager
def asgi_server(app, what: str = "uvicorn"):
    """An ASGI app on uvicorn in a thread, on a free port: its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, message=f"{what} to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@contextlib.contextmanager
def licence_service(path: Path, quota, latency_ms: float = 0.0, error_rate: float = 0.0):
    """The reference licence service on uvicorn in a thread, over the SQLite store at `path`."""
    from planshift.storage.directory import SqliteDirectory
    from planshift.storage.licence_service import create_service

    store = SqliteDirectory(path)
    try:
        with asgi_server(create_service(store, quota, latency_ms, error_rate), "the licence service") as url:
            yield url
    finally:
        store.close()


_counter = itertools.count()


@pytest.fixture
def unique_name(request) -> Callable[[str], str]:
    """Names unique to this test (topics, groups, transactional ids)."""
    run = uuid.uuid4().hex[:6]

    def make(kind: str = "x") -> str:
        return f"{request.node.name[:40]}-{kind}-{run}-{next(_counter)}".replace("[", "-").replace("]", "")

    return make


@pytest.fixture
def settings(kafka_broker, broker_settings, tmp_path: Path, unique_name) -> Settings:
    """Settings for one test: the session broker, its own topic prefix and data folder.

    Each test gets the contract's topics under a unique prefix, so tests never see
    each other's events.
    """
    test_settings = broker_settings.with_(topic_prefix=f"{unique_name('t')}.", data_dir=tmp_path / "var")
    test_settings.data_dir.mkdir(parents=True)
    create_topics(test_settings)
    return test_settings


@pytest.fixture
def topic_factory(kafka_broker, broker_settings, unique_name):
    """Create a bare topic with a unique name: `topic_factory(partitions=3)`."""
    from planshift.kafka import clients

    admin = clients.admin(broker_settings)

    def make(partitions: int = 1, **configs: str) -> str:
        name = unique_name("topic")
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                    "configs": configs}}, wait_for_metadata=True)
        return name

    yield make
    admin.close()


# -- helpers for tests of consumers against the real broker ----------------------


from planshift.kafka import clients  # noqa: E402
from planshift.kafka.reader import read_topic  # noqa: E402


def produce(settings: Settings, topic: str, records: list[tuple[str | None, object]], headers=None) -> None:
    """Send (key, value) pairs to a contract topic; a value that is bytes is sent as is."""
    producer = clients.producer(settings)
    try:
        for key, value in records:
            raw = value if isinstance(value, (bytes, type(None))) else encode_json(value)
            producer.send(settings.topic(topic), key=encode_key(key), value=raw,
                          headers=headers or event_headers(topic))
        producer.flush(30)
    finally:
        producer.close()


def values(settings: Settings, topic: str) -> list:
    return [r.value for r in read_topic(settings, settings.topic(topic))]


@contextlib.contextmanager
def running(processor, timeout: float = 30.0):
    """Run a StreamProcessor in a thread for the duration of the block."""
    failure: list[BaseException] = []

    def target():
        try:
            processor.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            failure.append(exc)

    thread = threading.Thread(target=target, name="processor", daemon=True)
    thread.start()
    try:
        yield processor
    finally:
        processor.stop()
        thread.join(timeout)
        assert not thread.is_alive(), "the processor did not stop"
    if failure:
        raise failure[0]


def seed_users(settings: Settings, tenant_id: str, subscription_id: str, sku: str, count: int,
               prefix: str = "u", disabled: tuple[str, ...] = ()) -> list[str]:
    from planshift.storage.directory import Licence, SqliteDirectory

    directory = SqliteDirectory.for_settings(settings)
    users = [f"{prefix}-{i:06d}" for i in range(count)]
    directory.put(Licence(tenant_id, u, subscription_id, sku, disabled) for u in users)
    directory.close()
    return users


def spawn(settings: Settings, log_path: Path, *args: str, **env: str):
    """`python -m cli ARGS` as a child process on the test's broker, topics and data."""
    import subprocess
    import sys

    environment = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                   "PLANSHIFT_TOPIC_PREFIX": settings.topic_prefix, "PLANSHIFT_DATA_DIR": str(settings.data_dir), **env}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=environment, stdout=log, stderr=log)


def kill_when(process, condition: Callable[[], object], message: str, timeout: float = 60.0) -> None:
    """SIGKILL `process` as soon as `condition` holds: a crash in mid-work."""
    import signal

    try:
        wait_for(condition, timeout, interval=0.02, message=message)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()

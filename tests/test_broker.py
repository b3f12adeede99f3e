"""`planshift broker start|stop|status` against real Apache Kafka processes."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from planshift.contract import Topic
from planshift.events import encode_json
from planshift.kafka.clients import producer
from planshift.kafka.reader import read_values
from planshift.kafka.topics import create_topics
from planshift.ops.broker import BrokerError, LocalBroker, free_port


def test_session_broker_answers_metadata(kafka_broker, broker_settings):
    status = kafka_broker.status()
    assert status.running and status.pid and status.version == "4.1.1"
    assert status.address == broker_settings.bootstrap_servers
    print(f"\nsession broker started in {kafka_broker.start_seconds:.2f}s")


@pytest.fixture
def own_broker(broker_settings, tmp_path):
    """A second broker with its own ports and data, for lifecycle tests."""
    settings = broker_settings.with_(bootstrap_servers=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "var")
    broker = LocalBroker(settings)
    yield broker
    broker.stop()


def test_start_stop_restart_keeps_data(own_broker):
    settings = own_broker.settings
    status, started = own_broker.start()
    assert started and status.running
    create_topics(settings)
    with producer(settings) as p:
        p.send(settings.topic(Topic.UPGRADE_STATUS), key=b"contoso", value=encode_json({"kept": 1})).get(30)

    assert own_broker.stop() is True
    assert not own_broker.status().running
    with socket.socket() as s:
        assert s.connect_ex(settings.bootstrap_host_port) != 0, "the port still answers after stop"

    status, started = own_broker.start()
    assert started
    assert read_values(settings, settings.topic(Topic.UPGRADE_STATUS)) == [{"kept": 1}]
    assert create_topics(settings).created == []  # the topics survived the restart too


def test_second_start_changes_nothing(own_broker):
    first, _ = own_broker.start()
    second, started = own_broker.start()
    assert started is False
    assert second.pid == first.pid


def test_stop_when_not_running_says_so(own_broker):
    assert own_broker.stop() is False


def test_start_on_a_busy_port_fails_with_a_clear_error(own_broker):
    with socket.socket() as squatter:
        squatter.bind(own_broker.settings.bootstrap_host_port)
        squatter.listen()
        with pytest.raises(BrokerError, match="already in use"):
            own_broker.start()
    assert not own_broker.status().running


def test_broker_that_cannot_start_reports_its_log_tail(own_broker):
    own_broker.start()
    own_broker.stop()
    # Make the stored node id disagree with the configuration: Kafka refuses to start.
    meta = own_broker.log_dirs / "meta.properties"
    meta.write_text(meta.read_text().replace("node.id=1", "node.id=7"))
    with pytest.raises(BrokerError) as caught:
        own_broker.start(timeout=60)
    assert "exited with code" in str(caught.value)
    assert "node" in str(caught.value).lower()  # the tail of the broker's own log


def test_cli_status_start_stop(own_broker, monkeypatch):
    env = {"PLANSHIFT_BOOTSTRAP_SERVERS": own_broker.settings.bootstrap_servers,
           "PLANSHIFT_DATA_DIR": str(own_broker.settings.data_dir),
           "PLANSHIFT_KAFKA_CACHE": str(own_broker.settings.kafka_cache_dir)}

    def cli(*args):
        import os
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)

    down = cli("broker", "status")
    assert down.returncode == 3 and "not running" in down.stdout
    up = cli("broker", "start")
    assert up.returncode == 0 and "broker started" in up.stdout, up.stderr
    again = cli("broker", "start")
    assert again.returncode == 0 and "already running" in again.stdout
    status = cli("broker", "status")
    assert status.returncode == 0
    assert own_broker.settings.bootstrap_servers in status.stdout and "4.1.1" in status.stdout
    assert f"pid {own_broker.pid()}" in status.stdout
    stop = cli("broker", "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not own_broker.status().running


def test_a_three_node_cluster_keeps_committing_transactions_with_a_node_down(broker_settings, tmp_path):
    """`planshift broker start --nodes 3`: topics replicated to 3 with min.insync.replicas 2,
    so a transaction still commits, and a read_committed reader still reads it, while one
    node is down (SIGKILLed); the node comes back and rejoins."""
    from planshift.ops.cluster import LocalCluster

    port = free_port()
    while any(_taken(port + i) for i in range(3)):
        port = free_port()
    settings = broker_settings.with_(bootstrap_servers=f"127.0.0.1:{port}", data_dir=tmp_path / "var")
    cluster = LocalCluster(settings, nodes=3)
    try:
        assert cluster.start(timeout=180).running == 3
        clustered = settings.with_(bootstrap_servers=cluster.bootstrap_servers, replication_factor=3)
        create_topics(clustered)
        topic = clustered.topic(Topic.UPGRADE_STATUS)

        def commit(n: int) -> None:
            with producer(clustered, transactional_id="cluster-test") as p:
                p.init_transactions()
                p.begin_transaction()
                p.send(topic, key=b"contoso", value=encode_json({"n": n}))
                p.commit_transaction()

        commit(0)  # the transaction log exists before the failure, as in any running cluster
        cluster.kill_node(2)
        assert cluster.status().running == 2
        commit(1)
        assert read_values(clustered, topic, 60) == [{"n": 0}, {"n": 1}]
        cluster.start_node(2, timeout=180)
        assert cluster.status().running == 3
    finally:
        cluster.stop()
    assert cluster.status().running == 0


def _taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

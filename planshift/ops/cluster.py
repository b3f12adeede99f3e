"""A local Apache Kafka cluster of N KRaft nodes on this host (`planshift broker start --nodes 3`).

Each node is broker and controller; the controllers form a static quorum
(`controller.quorum.voters`), so the cluster needs a majority of them up. Node 1 listens at
PLANSHIFT_BOOTSTRAP_SERVERS' first address, node i at that port + i − 1; clients should be
given all of them (`LocalCluster.bootstrap_servers`). Internal topics are replicated to
every node (at most 3) with `min.insync.replicas` 2, so a cluster of three keeps accepting
transactional writes with one node down, as a replicated production cluster would.

Node i keeps its files under `PLANSHIFT_DATA_DIR/kafka-cluster/node-i/kafka`, in the
layout of the single local broker (`broker.py`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

from planshift.ops.broker import START_TIMEOUT_S, BrokerError, LocalBroker, _cluster_id, _port_in_use, free_port
from planshift.settings import Settings


class ClusterNode(LocalBroker):
    """One node of a local cluster: a `LocalBroker` whose configuration names the quorum."""

    format_options = ()  # the static quorum is in the configuration

    def __init__(self, settings: Settings, node_id: int, voters: str, replication: int):
        super().__init__(settings)
        self.node_id, self.voters, self.replication = node_id, voters, replication

    def _quorum(self, host: str, controller_port: int) -> str:
        return f"controller.quorum.voters={self.voters}"


@dataclass(frozen=True)
class ClusterStatus:
    nodes: list[tuple[int, str, int | None]]  # (node id, address, pid or None)

    @property
    def running(self) -> int:
        return sum(1 for _, _, pid in self.nodes if pid is not None)

    def describe(self) -> str:
        parts = [f"node {n} at {address}: " + (f"pid {pid}" if pid else "down") for n, address, pid in self.nodes]
        return f"{self.running} of {len(self.nodes)} nodes running — " + "; ".join(parts)


class LocalCluster:
    def __init__(self, settings: Settings, nodes: int = 3):
        if nodes < 1:
            raise BrokerError("a cluster needs at least one node")
        self.settings = settings
        self.root = settings.data_dir / "kafka-cluster"
        self.state_file = self.root / "cluster.json"
        host, port = settings.bootstrap_host_port
        state = self._state()
        if state and state["nodes"] != nodes:
            raise BrokerError(f"{self.root} holds a cluster of {state['nodes']} nodes, not {nodes}; "
                              "remove it or start it with --nodes " + str(state["nodes"]))
        if not state:
            state = {"nodes": nodes, "cluster_id": _cluster_id(), "controller_ports": [free_port(host) for _ in
                                                                                       range(nodes)]}
        self._cluster_state = state
        self.host = host
        self.ports = [port + i for i in range(nodes)]
        voters = ",".join(f"{i + 1}@{host}:{c}" for i, c in enumerate(state["controller_ports"]))
        replication = min(3, nodes)
        self.nodes = [ClusterNode(settings.with_(bootstrap_servers=f"{host}:{p}", data_dir=self.root / f"node-{i + 1}"),
                                  i + 1, voters, replication) for i, p in enumerate(self.ports)]

    @classmethod
    def found(cls, settings: Settings) -> "LocalCluster | None":
        """The cluster started under PLANSHIFT_DATA_DIR before, if there is one."""
        state = settings.data_dir / "kafka-cluster" / "cluster.json"
        return cls(settings, json.loads(state.read_text())["nodes"]) if state.exists() else None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.ports)

    def _state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def start(self, timeout: float = START_TIMEOUT_S) -> ClusterStatus:
        """Start every node that is down (all at once: the quorum needs a majority), then wait
        until each answers a metadata request."""
        self.root.mkdir(parents=True, exist_ok=True)
        for node, controller_port in zip(self.nodes, self._cluster_state["controller_ports"]):
            node.home.mkdir(parents=True, exist_ok=True)
            if not node.state_file.exists():  # the quorum's addresses are fixed before any node starts
                node.state_file.write_text(json.dumps({"cluster_id": self._cluster_state["cluster_id"],
                                                       "controller_port": controller_port,
                                                       "kafka_version": self.settings.kafka_version}))
        self.state_file.write_text(json.dumps(self._cluster_state, indent=2))
        launched = []
        for node in self.nodes:
            if node.pid() is None:
                host, port = node.settings.bootstrap_host_port
                if _port_in_use(host, port):
                    raise BrokerError(f"{host}:{port} (node {node.node_id}) is in use by another process")
                launched.append((node, node.launch()))
        for node, proc in launched:
            node.wait_ready(proc, timeout)
        return self.status()

    def start_node(self, node_id: int, timeout: float = START_TIMEOUT_S) -> None:
        node = self.nodes[node_id - 1]
        if node.pid() is None:
            node.wait_ready(node.launch(), timeout)

    def kill_node(self, node_id: int, timeout: float = 60.0) -> None:
        """SIGKILL one node (a crash, not a clean shutdown), and return once the quorum has
        fenced it: its partitions have new leaders then, as in a cluster that lost a node a
        while ago."""
        pid = self.nodes[node_id - 1].pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        self.nodes[node_id - 1].stop(timeout=10)
        survivors = ",".join(n.settings.bootstrap_servers for n in self.nodes if n.node_id != node_id)
        deadline = time.monotonic() + timeout
        while node_id in self._registered(survivors):
            if time.monotonic() > deadline:
                raise BrokerError(f"node {node_id} was still registered {timeout:.0f}s after it was killed")
            time.sleep(0.5)

    def _registered(self, servers: str) -> set[int]:
        """The node ids the cluster lists as live (unfenced) brokers."""
        from kafka.errors import KafkaError

        from planshift.kafka import clients

        try:
            admin = clients.admin(self.settings.with_(bootstrap_servers=servers), request_timeout_ms=5000)
        except (KafkaError, OSError):
            return set(range(1, len(self.nodes) + 1))
        try:
            brokers = admin.describe_cluster()["brokers"]
            return {broker["broker_id"] for broker in brokers if not broker.get("is_fenced")}
        except (KafkaError, OSError):
            return set(range(1, len(self.nodes) + 1))
        finally:
            admin.close()

    def stop(self) -> bool:
        """Stop every node; whether any was running."""
        return any([node.stop() for node in self.nodes])

    def status(self) -> ClusterStatus:
        return ClusterStatus([(n.node_id, n.settings.bootstrap_servers, n.pid()) for n in self.nodes])

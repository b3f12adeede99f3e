"""A local Apache Kafka for development, demos and tests: one KRaft node (broker+controller).

The jars come from Maven Central: `org.apache.kafka:kafka_2.13` plus the log4j2 SLF4J
binding that its published POM leaves out, resolved once by
`maven-dependency-plugin:copy-dependencies` into a cache outside the work tree
(`Settings.kafka_cache_dir`). The broker's data, configuration, pid file and log live
under `PLANSHIFT_DATA_DIR/kafka`, so a restarted broker keeps its topics and offsets.

`start()` returns once a metadata request succeeds, or raises `BrokerError` with the
tail of the broker's log within the timeout. `LocalBroker(settings, secure=True)` (`planshift
broker start --secure`) listens with SASL_SSL only: a CA and a keystore made with keytool,
SCRAM-SHA-512 users for the admin and every role (created when the storage is formatted),
the `StandardAuthorizer` with nothing allowed that an ACL does not allow, and each role's
ACLs applied once it answers (`planshift/ops/security.py`). A data folder formatted secure
stays secure. `stop()` sends SIGTERM and waits (the
broker's shutdown hook closes its logs cleanly), then SIGKILL as a last resort.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from planshift.logs import get_logger
from planshift.settings import Settings

log = get_logger(__name__)

MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
LOG4J_VERSION = "2.24.3"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>planshift</groupId>
  <artifactId>planshift-kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <!-- The published POM leaves out the logging binding that the release tarball adds. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2_PROPERTIES = """status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.err.ref = STDERR
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = warn
"""


class BrokerError(RuntimeError):
    """The local broker could not be installed, started or stopped."""


def ensure_kafka_jars(settings: Settings, quiet: bool = False) -> Path:
    """Resolve the Kafka jars from Maven Central once; return the folder holding them."""
    home = settings.kafka_cache_dir / settings.kafka_version
    libs = home / "libs"
    marker = home / ".complete"
    if marker.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed once to fetch Apache Kafka from Maven Central; install it")
    home.mkdir(parents=True, exist_ok=True)
    pom = home / "pom.xml"
    pom.write_text(POM_TEMPLATE.format(kafka=settings.kafka_version, log4j=LOG4J_VERSION))
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(f"fetching Apache Kafka {settings.kafka_version} jars from Maven Central into {libs} …", flush=True)
    proc = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(pom), f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise BrokerError(f"resolving org.apache.kafka:kafka_2.13:{settings.kafka_version} failed:\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    marker.write_text(settings.kafka_version)
    return libs


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out as the source port
# of an outgoing connection (every Kafka client makes many) cannot be taken between the moment
# a listener's port is chosen here and the moment the broker binds it.
LISTEN_PORTS = range(20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a listener to bind soon."""
    import random

    for port in random.sample(LISTEN_PORTS, 50):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # that range is full: let the kernel choose
        s.bind((host, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        try:
            return stat.read_text().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return True


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    address: str
    pid: int | None
    version: str
    data_dir: Path

    def describe(self) -> str:
        if not self.running:
            return f"not running (address {self.address}, data {self.data_dir})"
        return f"running at {self.address}, pid {self.pid}, Apache Kafka {self.version}, data {self.data_dir}"


class LocalBroker:
    """One combined KRaft node whose files live under `settings.data_dir / "kafka"`."""

    def __init__(self, settings: Settings, secure: bool = False):
        self.settings = settings
        self.home = settings.data_dir / "kafka"
        self.log_dirs = self.home / "data"
        self.state_file = self.home / "broker.json"
        self.pid_file = self.home / "broker.pid"
        self.log_file = self.home / "broker.log"
        self.properties_file = self.home / "server.properties"
        self.log4j_file = self.home / "log4j2.properties"
        self.tls_dir = self.home / "tls"
        self.credentials_file = self.home / "credentials.json"
        self.secure = secure or bool(self._state().get("secure"))
        if self.secure and self.credentials_file.exists():
            self.settings = self.admin_settings()

    def credentials(self):
        from planshift.ops.security import Credentials

        return Credentials.load(self.credentials_file)

    def admin_settings(self) -> Settings:
        from planshift.ops.security import ADMIN_USER

        return self.credentials().settings_for(self.settings, ADMIN_USER)

    # -- state -------------------------------------------------------------
    def _state(self) -> dict:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {}

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def status(self) -> BrokerStatus:
        state = self._state()
        pid = self.pid()
        return BrokerStatus(
            running=pid is not None,
            address=self.settings.bootstrap_servers,
            pid=pid,
            version=state.get("kafka_version", self.settings.kafka_version),
            data_dir=self.home,
        )

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> tuple[BrokerStatus, bool]:
        """Start the broker unless it runs. Returns (status, started_now)."""
        if self.pid() is not None:
            return self.status(), False
        proc = self.launch()
        self.wait_ready(proc, timeout)
        if self.secure:
            from planshift.ops.security import apply_acls

            apply_acls(self.settings)
        return self.status(), True

    def launch(self) -> subprocess.Popen:
        """Write the configuration, format the storage once, and start the JVM (not waiting)."""
        host, port = self.settings.bootstrap_host_port
        if _port_in_use(host, port):
            raise BrokerError(f"{host}:{port} is already in use by another process; "
                              "set PLANSHIFT_BOOTSTRAP_SERVERS to a free address")
        libs = ensure_kafka_jars(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        state = self._state()
        if state and state.get("kafka_version") != self.settings.kafka_version:
            raise BrokerError(
                f"the data in {self.home} was formatted by Kafka {state.get('kafka_version')}, "
                f"not {self.settings.kafka_version}; remove it or set PLANSHIFT_KAFKA_VERSION"
            )
        if not state:
            # The controller's address is written into the formatted metadata
            # (--standalone), so it is chosen once and kept for every restart.
            state = {
                "cluster_id": _cluster_id(),
                "controller_port": free_port(host),
                "kafka_version": self.settings.kafka_version,
                "secure": self.secure,
            }
        if self.secure and not self.credentials_file.exists():
            self._make_secrets(host)
        self._write_config(host, port, state["controller_port"])
        if self.secure:
            self.settings = self.admin_settings()  # its own probe, and the ACLs, as the admin
        if not (self.log_dirs / "meta.properties").exists():
            self._format(libs, state["cluster_id"])
        self.state_file.write_text(json.dumps(state, indent=2))

        log_handle = open(self.log_file, "ab")
        heap = os.environ.get("PLANSHIFT_KAFKA_HEAP", "512m")
        cmd = [
            "java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            *os.environ.get("PLANSHIFT_KAFKA_JVM_OPTS", "").split(),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkafka.logs.dir={self.home}",
            "-cp", f"{libs}/*", "kafka.Kafka", str(self.properties_file),
        ]
        proc = subprocess.Popen(cmd, stdout=log_handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        proc.started_at = time.monotonic()
        log_handle.close()
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_ready(self, proc: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> None:
        """Until a metadata request to this node succeeds; BrokerError with its log's tail if not."""
        deadline = proc.started_at + timeout
        while True:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(f"the broker exited with code {proc.returncode}:\n{self.log_tail()}")
            if _metadata_ok(self.settings):
                break
            if time.monotonic() > deadline:
                self._terminate(proc.pid)
                raise BrokerError(f"the broker did not answer a metadata request within {timeout:.0f}s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.2)
        log.info("broker started", address=self.settings.bootstrap_servers, pid=proc.pid,
                 seconds=round(time.monotonic() - proc.started_at, 2))

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop the broker if it runs. Returns whether it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._terminate(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- helpers -----------------------------------------------------------
    def _terminate(self, pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)

    # What a node of a cluster changes (`cluster.py`): its id, the quorum, the replication.
    node_id = 1
    replication = 1

    def _quorum(self, host: str, controller_port: int) -> str:
        return f"controller.quorum.bootstrap.servers={host}:{controller_port}"

    def _listeners(self, host: str, port: int, controller_port: int) -> str:
        if self.secure:
            return self._security_config(host, port, controller_port)
        return f"""listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""

    def _write_config(self, host: str, port: int, controller_port: int) -> None:
        self.log_dirs.mkdir(parents=True, exist_ok=True)
        rf, min_isr = self.replication, min(2, self.replication)
        props = f"""# Written by planshift broker start: KRaft node {self.node_id} (broker and controller).
process.roles=broker,controller
node.id={self.node_id}
{self._quorum(host, controller_port)}
{self._listeners(host, port, controller_port)}log.dirs={self.log_dirs}
num.partitions=1
default.replication.factor={rf}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=6
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# Small segments keep compaction of changelogs and the test topics cheap.
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=16777216
"""
        self.properties_file.write_text(props)
        level = os.environ.get("PLANSHIFT_KAFKA_LOG_LEVEL", "warn")
        self.log4j_file.write_text(LOG4J2_PROPERTIES.format(level=level))

    format_options = ("--standalone",)  # a node of a static quorum (`cluster.py`) formats without

    def _scram_options(self) -> list[str]:
        """`--add-scram` for every user of a secured broker: they exist from its first start."""
        if not self.secure:
            return []
        from planshift.ops.security import MECHANISM

        options = []
        for user, password in self.credentials().passwords.items():
            options += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        return options

    def _make_secrets(self, host: str) -> None:
        from planshift.ops.security import Credentials, make_tls

        store_password = secrets.token_urlsafe(18)
        files = make_tls(self.tls_dir, host, store_password)
        (self.tls_dir / "store-password").write_text(store_password)
        os.chmod(self.tls_dir / "store-password", 0o600)
        Credentials.create(self.credentials_file, files["ca_pem"])

    def _security_config(self, host: str, port: int, controller_port: int) -> str:
        """The listeners of a secured node: clients and the node itself over SASL_SSL with
        SCRAM-SHA-512; the controller listener (this host only) over SASL with PLAIN, as
        KRaft cannot use SCRAM there; the StandardAuthorizer, the admin the only super user."""
        from planshift.ops.security import ADMIN_USER

        admin = self.credentials().passwords[ADMIN_USER]
        store = (self.tls_dir / "store-password").read_text().strip()
        return f"""listeners=SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN_USER}" password="{admin}";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="{ADMIN_USER}" password="{admin}" user_{ADMIN_USER}="{admin}";
ssl.keystore.type=PKCS12
ssl.keystore.location={self.tls_dir / "broker.p12"}
ssl.keystore.password={store}
ssl.key.password={store}
ssl.truststore.type=PKCS12
ssl.truststore.location={self.tls_dir / "truststore.p12"}
ssl.truststore.password={store}
ssl.endpoint.identification.algorithm=https
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{ADMIN_USER}
allow.everyone.if.no.acl.found=false
"""

    def _format(self, libs: Path, cluster_id: str) -> None:
        proc = subprocess.run(
            ["java", "-Xmx256m", "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
             *self.format_options, *self._scram_options(), "-t", cluster_id, "-c", str(self.properties_file)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise BrokerError(f"formatting node {self.node_id}'s storage failed:\n{proc.stdout}{proc.stderr}")


def _cluster_id() -> str:
    # 16 random bytes, URL-safe base64 without padding; never starting with '-'.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


def _metadata_ok(settings: Settings) -> bool:
    """One metadata round trip: the broker is up when it answers with itself."""
    host, port = settings.bootstrap_host_port
    if not _port_in_use(host, port):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(**settings.kafka_client_config(), request_timeout_ms=3000,
                                 bootstrap_timeout_ms=3000, client_id="planshift-probe")
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()

"""Who may do what on the cluster: one principal per planshift role, least-privilege ACLs,
and the TLS and SCRAM material of a local secured broker (docs/SECURITY.md).

`ROLES` is the table: for each role its SCRAM user, the topics it reads and writes, its
consumer group and transactional ids, and its own changelog. `acls(settings)` turns it
into Kafka ACLs (`planshift acls apply` creates them); `planshift broker start --secure`
makes a CA and a broker keystore with the JDK's `keytool`, creates every role's SCRAM
user at format time, and turns on Kafka's `StandardAuthorizer` with nothing allowed
that an ACL does not allow.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from planshift.contract import CONSUMED_TOPICS, REDRIVEN_TOPIC, TOPICS, Topic, dlq
from planshift.errors import OperationError
from planshift.settings import Settings

MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "planshift-admin"  # the broker's own principal and the only super user

ARCHIVED = (Topic.UPGRADE_REQUESTED, Topic.UPGRADE_STATUS, Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED,
            Topic.INVOICE_ISSUED)


@dataclass(frozen=True)
class Role:
    name: str
    user: str  # the SCRAM user, principal User:{user}
    purpose: str
    reads: tuple[str, ...] = ()  # contract topics
    writes: tuple[str, ...] = ()
    group: str | None = None  # its consumer group; its transactional ids are "{group}-{instance}"
    changelog: bool = False  # it creates, reads and writes its own "{group}.state.changelog"
    operator: bool = False  # the operators' extra rights (below)

    @property
    def principal(self) -> str:
        return f"User:{self.user}"


def _role(name: str, purpose: str, reads=(), writes=(), group=None, changelog=False, operator=False) -> Role:
    return Role(name, f"planshift-{name}", purpose, tuple(reads), tuple(writes), group, changelog, operator)


ROLES: dict[str, Role] = {r.name: r for r in (
    _role("intake", "validates requests, checks eligibility and credit, plans batches",
          reads=(Topic.UPGRADE_REQUESTED, Topic.CREDIT_CHECK_DECIDED, Topic.UPGRADE_ENDED, Topic.SERVICE_HEALTH,
                 Topic.UPGRADE_STATUS),
          writes=(Topic.UPGRADE_STATUS, Topic.CREDIT_CHECK_REQUESTED, Topic.LICENSE_BATCHES,
                  dlq(Topic.UPGRADE_REQUESTED), dlq(Topic.CREDIT_CHECK_DECIDED), dlq(Topic.UPGRADE_ENDED)),
          group="planshift-intake", changelog=True),
    _role("migrate", "moves each batch's users to the new plan",
          reads=(Topic.LICENSE_BATCHES,),
          # license.batches too: a chained batch releases the next (a licence API's quota)
          writes=(Topic.LICENSE_BATCH_COMPLETED, Topic.LICENSE_BATCHES, dlq(Topic.LICENSE_BATCHES)),
          group="planshift-migrate", changelog=True),
    _role("settle", "switches billing and issues the credit, once per upgrade",
          reads=(Topic.LICENSE_BATCH_COMPLETED,),
          writes=(Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED, Topic.UPGRADE_STATUS, Topic.UPGRADE_ENDED,
                  dlq(Topic.LICENSE_BATCH_COMPLETED)),
          group="planshift-settle", changelog=True),
    _role("archive", "copies business events into the lake (reads only; an invalid record goes to its dead letters)",
          reads=ARCHIVED, writes=tuple(dlq(t) for t in ARCHIVED), group="planshift-archive"),
    _role("billing", "the billing system: bills from switches and credits, publishes invoices",
          reads=(Topic.UPGRADE_REQUESTED, Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED),
          writes=(Topic.INVOICE_ISSUED, dlq(Topic.UPGRADE_REQUESTED), dlq(Topic.BILLING_SWITCH),
                  dlq(Topic.CREDIT_ISSUED)),
          group="planshift-billing-simulator", changelog=True),
    _role("orders", "an upstream order system: sends requests, follows their statuses",
          reads=(Topic.UPGRADE_STATUS,), writes=(Topic.UPGRADE_REQUESTED,)),
    _role("credit", "the credit-check system: reads checks asked for, sends decisions",
          reads=(Topic.CREDIT_CHECK_REQUESTED,), writes=(Topic.CREDIT_CHECK_DECIDED,)),
    _role("status", "the admins' status page (planshift serve): follows statuses, service health and dead letters",
          reads=(Topic.UPGRADE_STATUS, Topic.SERVICE_HEALTH) + tuple(dlq(t) for t in CONSUMED_TOPICS)),
    _role("operator", "creates topics, reads everything, replays groups, re-drives dead letters, "
                      "publishes service health",
          reads=tuple(t.name for t in TOPICS) + tuple(dlq(t) for t in CONSUMED_TOPICS) + (REDRIVEN_TOPIC,),
          writes=tuple(CONSUMED_TOPICS) + (REDRIVEN_TOPIC,), group="planshift-redrive", operator=True),
)}


@dataclass(frozen=True)
class Grant:
    """One ACL: principal may `operation` on the resource (ALLOW; everything else is denied)."""

    principal: str
    resource: str  # TOPIC | GROUP | TRANSACTIONAL_ID | CLUSTER
    name: str
    pattern: str  # LITERAL | PREFIXED
    operation: str  # READ | WRITE | CREATE | DESCRIBE | DESCRIBE_CONFIGS | DELETE | ALTER_CONFIGS

    def describe(self) -> str:
        star = "*" if self.pattern == "PREFIXED" else ""
        return f"{self.principal:<28} {self.operation:<16} {self.resource.lower()} {self.name}{star}"


def grants(settings: Settings, role: Role) -> list[Grant]:
    out: list[Grant] = []

    def add(resource: str, name: str, *operations: str, pattern: str = "LITERAL") -> None:
        out.extend(Grant(role.principal, resource, name, pattern, op) for op in operations)

    for topic in role.reads:
        add("TOPIC", settings.topic(topic), "READ", "DESCRIBE")
    for topic in role.writes:
        add("TOPIC", settings.topic(topic), "WRITE", "DESCRIBE")
    if role.group is not None:
        add("GROUP", settings.topic(role.group), "READ", "DESCRIBE")
        add("TRANSACTIONAL_ID", f"{settings.topic(role.group)}-", "WRITE", "DESCRIBE", pattern="PREFIXED")
    if role.changelog:
        add("TOPIC", settings.topic(f"{role.group}.state.changelog"), "CREATE", "READ", "WRITE", "DESCRIBE",
            "DESCRIBE_CONFIGS")
    if role.operator:
        add("CLUSTER", "kafka-cluster", "CREATE", "DESCRIBE")
        prefix = settings.topic("")
        if prefix:  # its topics only, when environments share the cluster
            add("TOPIC", prefix, "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS", pattern="PREFIXED")
        add("GROUP", settings.topic("planshift-"), "READ", "DESCRIBE", "DELETE", pattern="PREFIXED")
    return list(dict.fromkeys(out))  # a topic both read and written is described once


def acls(settings: Settings, roles: list[Role] | None = None) -> list[Grant]:
    return [g for role in (roles or list(ROLES.values())) for g in grants(settings, role)]


def apply_acls(settings: Settings, roles: list[Role] | None = None) -> int:
    """Create every role's ACLs (creating one that exists changes nothing); how many."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    from planshift.kafka import clients

    wanted = acls(settings, roles)
    made = [ACL(g.principal, "*", ACLOperation[g.operation], ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType[g.resource], g.name, ACLResourcePatternType[g.pattern]))
            for g in wanted]
    admin = clients.admin(settings)
    try:
        for start in range(0, len(made), 100):
            result = admin.create_acls(made[start:start + 100])
            failed = result.get("failed") or []
            if failed:
                acl, error = failed[0]
                raise OperationError(f"creating ACLs failed ({len(failed)}): {acl}: {error}")
    finally:
        admin.close()
    return len(made)


def set_password(settings: Settings, user: str, password: str, wait_s: float = 30.0) -> int:
    """Create the SCRAM-SHA-512 user, or give it a new password (as the admin); return once
    every broker of the cluster takes it, with the number of brokers (0: the admin's own
    connection is not SASL, so nothing could be checked)."""
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    from planshift.kafka import clients

    admin = clients.admin(settings)
    try:
        result = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, ScramMechanism.SCRAM_SHA_512, password)])
        error = (result or {}).get(user)
        if error:  # kafka-python answers the broker's error message, None on success
            from kafka.errors import ClusterAuthorizationFailedError

            if "authoriz" in str(error).lower() or "permission" in str(error).lower():
                raise ClusterAuthorizationFailedError(f"changing the password of {user} needs ALTER on the cluster")
            raise OperationError(f"setting the password of {user} failed: {error}")
        brokers = [(b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]]
    finally:
        admin.close()
    if not settings.security_protocol.startswith("SASL"):
        return 0
    return _await_credential(settings, user, password, brokers, wait_s)


def _await_credential(settings: Settings, user: str, password: str, brokers: list[tuple[str, int]],
                      wait_s: float) -> int:
    """Log in as `user` at each broker until each takes the new password. The controller
    has committed it when the admin call returns; each broker applies it as its metadata
    catches up, and until then answers the old one: a process restarted with the new
    password at once could be refused. Kafka keeps one credential per user and mechanism,
    so a broker that takes the new password refuses the old one."""
    import time

    from planshift.kafka import sasl

    deadline = time.monotonic() + wait_s
    pending = {broker: "" for broker in sorted(set(brokers))}  # broker → what it last answered
    while True:
        for host, port in list(pending):
            verdict = sasl.login(settings, host, port, username=user, password=password, mechanism=MECHANISM,
                                 timeout=5)
            if verdict is not None and verdict.accepted:
                del pending[(host, port)]
            else:
                pending[(host, port)] = "no answer" if verdict is None else "still refuses it"
        if not pending:
            return len(brokers)
        if time.monotonic() > deadline:
            raise OperationError(f"the new password of {user} is set, but " + ", ".join(
                f"{host}:{port} ({answer})" for (host, port), answer in pending.items()) + f" did not take it within "
                f"{wait_s:.0f}s: a process that logs in there with it is refused until they do")
        time.sleep(0.2)


# -- a local secured broker ------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    """The passwords of a local secured broker: the admin's and each role's (file mode 0600)."""

    path: Path
    cafile: Path
    passwords: dict[str, str]  # user → password

    @classmethod
    def create(cls, path: Path, cafile: Path) -> "Credentials":
        users = [ADMIN_USER, *(r.user for r in ROLES.values())]
        credentials = cls(path, cafile, {u: secrets.token_urlsafe(18) for u in users})
        credentials.save()
        return credentials

    @classmethod
    def load(cls, path: Path) -> "Credentials":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise OperationError(f"no credentials at {path}: start the broker with --secure first") from None
        return cls(path, Path(raw["cafile"]), dict(raw["passwords"]))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        os.chmod(self.path, 0o600)
        self.path.write_text(json.dumps({"cafile": str(self.cafile), "mechanism": MECHANISM,
                                         "passwords": self.passwords}, indent=2))

    def settings_for(self, settings: Settings, user: str) -> Settings:
        """`settings` as `user` (a role's or the admin's) would have them: SASL_SSL, SCRAM, the CA."""
        if user not in self.passwords:
            raise OperationError(f"no such user {user!r}; one of {', '.join(self.passwords)}")
        return settings.with_(security_protocol="SASL_SSL", sasl_mechanism=MECHANISM, sasl_username=user,
                              sasl_password=self.passwords[user], ssl_cafile=str(self.cafile))

    def environment(self, user: str) -> dict[str, str]:
        return {"PLANSHIFT_SECURITY_PROTOCOL": "SASL_SSL", "PLANSHIFT_SASL_MECHANISM": MECHANISM,
                "PLANSHIFT_SASL_USERNAME": user, "PLANSHIFT_SASL_PASSWORD": self.passwords[user],
                "PLANSHIFT_SSL_CAFILE": str(self.cafile)}


def user_of(name: str) -> str:
    """A role's name (intake) or a user (planshift-intake, planshift-admin) → the user."""
    if name in ROLES:
        return ROLES[name].user
    if name == "admin":
        return ADMIN_USER
    return name


def _keytool(*args: str) -> None:
    done = subprocess.run(["keytool", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise OperationError(f"keytool {args[0]} failed: {done.stdout}{done.stderr}".strip())


def make_tls(folder: Path, host: str, password: str) -> dict[str, Path]:
    """A CA, and a broker keystore signed by it for `host`, localhost and 127.0.0.1 (PKCS12),
    with the JDK's keytool; and the CA as PEM (clients' PLANSHIFT_SSL_CAFILE) and as a
    truststore (the broker's own client side)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, keystore, truststore = folder / "ca.p12", folder / "broker.p12", folder / "truststore.p12"
    ca_pem, csr, cert = folder / "ca.pem", folder / "broker.csr", folder / "broker.pem"
    for path in (ca, keystore, truststore):
        path.unlink(missing_ok=True)
    store = ["-storetype", "PKCS12", "-storepass", password]
    _keytool("-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
             "-dname", "CN=planshift local CA", "-ext", "bc:c", "-keystore", str(ca), *store)
    _keytool("-exportcert", "-alias", "ca", "-rfc", "-file", str(ca_pem), "-keystore", str(ca), *store)
    _keytool("-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
             "-dname", f"CN={host}", "-keystore", str(keystore), *store)
    _keytool("-certreq", "-alias", "broker", "-file", str(csr), "-keystore", str(keystore), *store)
    names = {f"dns:{host}" if not host.replace(".", "").isdigit() else f"ip:{host}", "dns:localhost", "ip:127.0.0.1"}
    _keytool("-gencert", "-alias", "ca", "-infile", str(csr), "-outfile", str(cert), "-rfc", "-validity", "3650",
             "-ext", "SAN=" + ",".join(sorted(names)), "-ext", "KeyUsage=digitalSignature,keyEncipherment",
             "-ext", "ExtendedKeyUsage=serverAuth,clientAuth", "-keystore", str(ca), *store)
    _keytool("-importcert", "-alias", "ca", "-file", str(ca_pem), "-noprompt", "-keystore", str(keystore), *store)
    _keytool("-importcert", "-alias", "broker", "-file", str(cert), "-keystore", str(keystore), *store)
    _keytool("-importcert", "-alias", "ca", "-file", str(ca_pem), "-noprompt", "-keystore", str(truststore), *store)
    return {"ca_pem": ca_pem, "keystore": keystore, "truststore": truststore}


def markdown_table() -> str:
    """The roles as docs/SECURITY.md shows them (a test keeps the two the same)."""

    def names(topics, dead_letters: bool) -> str:
        chosen = [t for t in topics if t.endswith(".dlq") == dead_letters]
        return ", ".join(f"`{t}`" for t in chosen) or "—"

    lines = ["| role | principal | reads | writes | dead letters it writes | group, transactional ids | "
             "also |", "|---|---|---|---|---|---|---|"]
    for role in ROLES.values():
        group = f"`{role.group}`, `{role.group}-*`" if role.group else "—"
        also = []
        if role.changelog:
            also.append(f"creates, reads and writes `{role.group}.state.changelog`")
        if role.operator:
            also.append("creates topics (cluster CREATE); reads, describes and resets every `planshift-*` group")
        reads = ", ".join(f"`{t}`" for t in role.reads) or "—"
        lines.append(f"| {role.name} | `User:{role.user}` | {reads} | "
                     f"{names(role.writes, False)} | {names(role.writes, True)} | {group} | "
                     f"{'; '.join(also) or '—'} |")
    return "\n".join(lines)

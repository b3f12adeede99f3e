"""planshift's consumers wired together on the broker-free test driver, for rule tests.

`Pipeline` runs intake, migration and settlement on `planshift.runtime.testing` over one
in-memory `Topics`, one clock and a real embedded licence directory (SQLite in a temp
folder), so a test publishes what an order system, an admin or the credit system would
and reads back what planshift said — in milliseconds, without a broker.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

from consumers.intake import intake_config
from consumers.migrate import migration_config
from consumers.settle import settlement_config
from planshift.contract import Topic
from planshift.events import encode_json, rfc3339, with_envelope
from planshift.runtime.testing import Clock, TestDriver, Topics, deliver
from planshift.settings import Settings
from planshift.storage.directory import Licence, open_directory
from producers.samples import upgrade_request

DAY = date(2026, 11, 17)  # a Tuesday
STANDARD, PREMIUM = "M365_BUSINESS_STANDARD", "M365_BUSINESS_PREMIUM"


class FlakyDirectory:
    """The real embedded directory, whose writes fail while `down` (a licence-service outage)."""

    def __init__(self, store):
        self.store, self.down = store, False

    def migrate(self, *args, **kwargs):
        if self.down:
            raise ConnectionError("licence directory unreachable")
        return self.store.migrate(*args, **kwargs)

    def sweep(self, *args, **kwargs):
        if self.down:
            raise ConnectionError("licence directory unreachable")
        return self.store.sweep(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.store, name)


class Pipeline:
    def __init__(self, tmp_path: Path, directory: Any = None, start: datetime | None = None,
                 directory_url: str | None = None, **settings: Any):
        self.settings = Settings.from_env({}).with_(data_dir=tmp_path / "var", directory_url=directory_url,
                                                    **{"batch_size": 10, **settings})
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_directory(self.settings)  # SQLite, or PostgreSQL for a directory_url
        self.directory = directory(self.store) if callable(directory) else (directory or self.store)
        self.clock = Clock(start or datetime(2026, 11, 17, 9, 30, tzinfo=timezone.utc))
        self.topics = Topics(self.settings, self.clock)
        self.health: dict[str, Any] = {}
        tables = {Topic.SERVICE_HEALTH: self.health}

        def driver(config) -> TestDriver:
            return TestDriver(self.settings, config, self.topics, self.clock, tables)

        self.intake = driver(intake_config(self.settings, self.directory, clock=self.clock, retry_backoff_s=0))
        self.migrate = driver(migration_config(self.settings, self.directory, retry_backoff_s=0))
        self.settle = driver(settlement_config(self.settings, self.directory, retry_backoff_s=0))
        self.drivers = [self.intake, self.migrate, self.settle]

    # -- the world around planshift ---------------------------------------------------
    def seed(self, tenant: str, count: int, subscription: str | None = None, sku: str = STANDARD,
             prefix: str = "u", disabled: tuple[str, ...] = ()) -> list[str]:
        subscription = subscription or f"{tenant}-sub-{sku.lower()}"
        users = [f"{prefix}-{i:04d}" for i in range(count)]
        self.store.put(Licence(tenant, u, subscription, sku, disabled) for u in users)
        return users

    def request(self, tenant: str = "contoso", upgrade: str = "ord-1", **overrides: Any) -> dict[str, Any]:
        edit: Callable[[dict], None] | None = overrides.pop("edit", None)
        value = with_envelope(upgrade_request(tenant, upgrade, today=self.clock.moment.date(), **overrides),
                              Topic.UPGRADE_REQUESTED)
        value["occurred_at"] = rfc3339(self.clock.moment)
        if edit is not None:
            edit(value)
        return value

    def publish(self, value: dict[str, Any] | bytes, topic: str = Topic.UPGRADE_REQUESTED,
                key: str | None = None) -> None:
        """What an order system (or the credit system) does; planshift does not run yet."""
        if key is None and isinstance(value, dict):
            key = value.get("tenant_id")
        self.topics.append(self.settings.topic(topic), key.encode() if key else None,
                           value if isinstance(value, bytes) else _json(value),
                           [("event_type", topic.encode()), ("schema_version", b"1")])

    def decide(self, upgrade_id: str, approved: bool, tenant: str = "contoso") -> None:
        self.publish(with_envelope({"tenant_id": tenant, "upgrade_id": upgrade_id, "approved": approved,
                                    "decided_at": rfc3339(self.clock.moment)}, Topic.CREDIT_CHECK_DECIDED),
                     Topic.CREDIT_CHECK_DECIDED)

    def set_health(self, service: str, status: str) -> None:
        self.health[service] = {"service": service, "status": status, "updated_at": rfc3339(self.clock.moment)}

    # -- running it ---------------------------------------------------------------------
    def run(self, *drivers: TestDriver) -> int:
        """Let the given consumers (default: all) handle everything waiting, until at rest."""
        return deliver(drivers or self.drivers)

    def advance(self, seconds: float) -> int:
        """Let time pass (the drivers share the clock); the timers that come due fire."""
        self.clock.advance(seconds)
        return sum(d.advance(0) for d in self.drivers)

    # -- what planshift said -------------------------------------------------------------
    def events(self, topic: str) -> list[dict[str, Any]]:
        return self.topics.events(topic)

    def statuses(self, upgrade_id: str) -> list[dict[str, Any]]:
        return [s for s in self.events(Topic.UPGRADE_STATUS) if s["upgrade_id"] == upgrade_id]

    def status_names(self, upgrade_id: str) -> list[str]:
        names = [s["status"] for s in self.statuses(upgrade_id)]
        return [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]  # progress repeats `migrating`

    def last(self, upgrade_id: str) -> dict[str, Any]:
        return self.statuses(upgrade_id)[-1]

    def codes(self, upgrade_id: str) -> list[str]:
        return [r["code"] for r in self.last(upgrade_id)["reasons"]]

    def of(self, topic: str, upgrade_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events(topic) if e.get("upgrade_id") == upgrade_id]

    def dead_letters(self, topic: str):
        """The dead letters of `topic` that its dead-letter topic still keeps (what an operator finds)."""
        return self.topics.kept(self.settings.topic(f"{topic}.dlq"))

    def holders(self, tenant: str, subscription: str) -> list[str]:
        return self.store.holders(tenant, subscription)


def _json(value: dict[str, Any]) -> bytes:

    return encode_json(value)

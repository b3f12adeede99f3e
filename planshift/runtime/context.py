"""What a handler sees of one record, and what it hands back.

A handler never touches Kafka. It reads the record's event and its partition's state,
and records what should happen: events to emit and state to change. The runtime
applies both only when the handler returns, so a handler that raises leaves nothing
behind and can be retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, NamedTuple

from planshift.runtime.state import PartitionStore

_DELETED = object()
TIMER_PREFIX = "timer:"  # state keys of wall-clock timers (see engine.py)


class Output(NamedTuple):  # a few per handled record: a tuple is the cheapest immutable record to build
    topic: str  # contract topic name (the runtime applies the topic prefix)
    key: str | None
    value: dict[str, Any]
    event_type: str
    # The partition, given the topic's partition count; None: the key's (Kafka's partitioner).
    placement: Callable[[int], int] | None = None


@dataclass(slots=True)  # one per handled record: slots make it cheaper to build
class Context:
    topic: str  # contract topic name of the record
    partition: int
    offset: int
    timestamp: int
    key: str | None
    headers: Mapping[str, bytes]
    store: PartitionStore | None
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, Any] = field(default_factory=dict)
    unlogged: set[str] = field(default_factory=set)  # keys whose state is derived, not logged
    expiries: dict[str, int] = field(default_factory=dict)  # key → when it expires (ms since the epoch)
    clock: Callable[[], float] = time.time  # the runtime's clock (a test driver's own in tests)
    value: bytes | None = None  # the record's value as it came (the archiver keeps it)
    forwards: list[tuple[str, bytes | None, bytes | None, list]] = field(default_factory=list)

    def now(self) -> datetime:
        """The moment this record is handled, in UTC: handlers use it, not the system clock,
        so a test driver can move time."""
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    # -- state: reads see this record's own pending writes --------------------
    def get(self, key: str, default: Any = None) -> Any:
        if key in self.writes:
            value = self.writes[key]
            return default if value is _DELETED else value
        if self.store is None:
            return default
        return self.store.get(key, default)

    def put(self, key: str, value: Any, logged: bool = True, expires_at: datetime | None = None) -> None:
        """Change state. `logged=False` for state the runtime rebuilds from a source
        topic at restore (`ProcessorConfig.derived_from`), so no changelog record is written.
        `expires_at`: the key is deleted once that moment has passed (state that can never
        be needed again; `state.py`). Derived state that expires goes from memory only; its
        fold at restore must give it the same moment."""
        self.writes[key] = value
        if expires_at is not None:
            self.expiries[key] = int(expires_at.timestamp() * 1000)
        elif self.expiries:  # (most handlers never set one: no work per put for them)
            self.expiries.pop(key, None)
        if logged:
            self.unlogged.discard(key)
        else:
            self.unlogged.add(key)

    def delete(self, key: str) -> None:
        self.writes[key] = _DELETED
        if self.expiries:
            self.expiries.pop(key, None)

    # -- timers ---------------------------------------------------------------
    def schedule(self, name: str, due: datetime, data: dict[str, Any] | None = None) -> None:
        """Run the processor's `on_timer(ctx, name, data)` once `due` has passed; kept in
        this partition's state, so it survives restarts and fires once."""
        self.put(TIMER_PREFIX + name, {"due": int(due.timestamp() * 1000), "data": data or {}})

    def cancel(self, name: str) -> None:
        self.delete(TIMER_PREFIX + name)

    # -- output ---------------------------------------------------------------
    def emit(self, topic: str, key: str | None, value: dict[str, Any], event_type: str | None = None,
             placement: Callable[[int], int] | None = None) -> None:
        self.outputs.append(Output(topic, key, value, event_type or topic, placement))

    def publish(self, event: dict[str, Any], key: str | None = None,
                placement: Callable[[int], int] | None = None) -> None:
        """Emit a contract event (`planshift/events.py` builds them) to the topic of its
        `event_type`, keyed by its tenant unless `key` says otherwise."""
        topic = event["event_type"]
        self.outputs.append(Output(topic, event["tenant_id"] if key is None else key, event, topic, placement))

    def forward(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Send a record as it is (no envelope, no encoding) to `topic`, its name on the
        cluster: the re-drive sends a dead letter back this way."""
        self.forwards.append((topic, key, value, headers))

    def pending_writes(self) -> list[tuple[str, Any, bool, int | None]]:
        """(key, value, logged, expires_at_ms) of each write; value None means delete."""
        expiries = self.expiries
        return [(k, None if v is _DELETED else v, k not in self.unlogged, expiries.get(k))
                for k, v in self.writes.items()]

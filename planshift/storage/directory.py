"""The licence directory (CONTRACT.md §5): who holds which licence.

`LicenceDirectory` is the interface the consumers use; `SqliteDirectory` is the
embedded default, a SQLite file under `PLANSHIFT_DATA_DIR`, for one host;
`planshift.storage.postgres.PostgresDirectory` (`PLANSHIFT_DIRECTORY_URL=postgresql://…`)
the same on a database server that processes on several hosts share. `open_directory`
picks the one the settings name. SQLite in WAL mode with a
busy timeout lets several processes (intake, migration workers) read and write it at
once; each write is one SQLite transaction. `import_parquet` and `export_parquet`
move it to and from Parquet with the contract's columns.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Protocol, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from planshift.errors import PermanentError
from planshift.settings import Settings

PARQUET_SCHEMA = pa.schema([
    ("tenant_id", pa.string()),
    ("user_id", pa.string()),
    ("subscription_id", pa.string()),
    ("sku", pa.string()),
    ("disabled_services", pa.list_(pa.string())),
])

DDL = """
CREATE TABLE IF NOT EXISTS licences (
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    disabled_services TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant_id, subscription_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS licences_by_user ON licences (tenant_id, user_id);
-- What each migrated user had switched off before the upgrade reset it (CONTRACT.md §4:
-- "previously disabled services are recorded per user before they are reset").
CREATE TABLE IF NOT EXISTS service_resets (
    tenant_id TEXT NOT NULL,
    upgrade_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    disabled_services TEXT NOT NULL,
    PRIMARY KEY (upgrade_id, user_id)
) WITHOUT ROWID;
-- Which tenant each upgrade_id belongs to: the first to use it in a valid request. The
-- directory is the one store every intake instance shares, so an id sent by two tenants is
-- refused here.
CREATE TABLE IF NOT EXISTS upgrade_owners (
    upgrade_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL
) WITHOUT ROWID;
-- The first request (valid or not) of each tenant with each upgrade_id, for good: it tells
-- a request handled again (the same event, soon) from a repeat of an upgrade so old that
-- intake's state has let it go (another event, or the same one long after).
CREATE TABLE IF NOT EXISTS upgrade_sightings (
    upgrade_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    seen_at INTEGER NOT NULL,  -- when that request was last handled (ms since the epoch, intake's clock)
    PRIMARY KEY (upgrade_id, tenant_id)
) WITHOUT ROWID;
-- Users who took a source licence after the batches were planned, moved before settlement
-- (CONTRACT.md §4 r2), so their number survives a redo.
CREATE TABLE IF NOT EXISTS swept_users (
    upgrade_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (upgrade_id, user_id)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class MigrationResult:
    users_migrated: int  # moved from the source licence to the target licence now
    users_already_migrated: int  # held the target and not the source already (a repeat)
    users_missing: int  # hold neither any more (licence removed since the batch was planned)
    resets: list[tuple[str, tuple[str, ...]]]  # (user_id, services they had disabled), for this batch


class Claim(NamedTuple):
    """An upgrade_id as a tenant's request finds it: its owner (the tenant whose valid
    request used it first; None if no valid request has) and this tenant's first request
    with it: its event, and when that was handled last before now (now, if never)."""

    owner: str | None
    first_event_id: str
    last_seen_at: int  # ms since the epoch


def licence_rows(licences: Iterable["Licence"]) -> list[tuple]:
    """Licences as the directory's rows (disabled services as a JSON list)."""
    return [(lic.tenant_id, lic.user_id, lic.subscription_id, lic.sku, json.dumps(list(lic.disabled_services)))
            for lic in licences]


def services(raw: str) -> tuple[str, ...]:
    """A row's disabled services (stored as a JSON list)."""
    return tuple(json.loads(raw))


def refuse_unsafe(source_subscription_id: str, target_subscription_id: str, target_sku: str,
                  held_sku: str | None) -> None:
    """The migrations no directory makes (`MigrationRefused`): onto the source itself, or
    onto a subscription whose licences (`held_sku`, one of them) are of another SKU."""
    if source_subscription_id == target_subscription_id:
        raise MigrationRefused(f"source and target are the same subscription {source_subscription_id}: "
                               "moving users onto it would remove their only licence")
    if held_sku is not None and held_sku != target_sku:
        raise MigrationRefused(f"target subscription {target_subscription_id} is another subscription already "
                               f"in use (its licences are {held_sku}, not {target_sku}); they are not overwritten")


def first_claims(wanted: list[tuple[str, str, str]], before: dict[tuple[str, str], tuple], now_ms: int
                 ) -> dict[tuple[str, str], "Claim"]:
    """Each wanted (upgrade_id, tenant_id)'s `Claim`, from what the directory held before
    this claim (`before`: owner, first event, last seen); a pair new to it has the first of
    its events in it now."""
    found: dict[tuple[str, str], Claim] = {}
    for u, t, e in wanted:
        if (u, t) not in found:
            owner, first, at = before[(u, t)]
            found[(u, t)] = Claim(owner, e, now_ms) if first is None else Claim(owner, first, at)
    return found


class DirectoryError(ValueError):
    """A directory file or request that cannot be used; nothing was changed."""


class MigrationRefused(DirectoryError, PermanentError):
    """A migration that would cost users a licence: the source is the target, or the
    target is another subscription already in use. Nothing was changed; no retry helps."""


@dataclass(frozen=True)
class Licence:
    tenant_id: str
    user_id: str
    subscription_id: str
    sku: str
    disabled_services: tuple[str, ...] = ()


class LicenceDirectory(Protocol):
    def count_holders(self, tenant_id: str, subscription_id: str) -> int: ...

    def holders(self, tenant_id: str, subscription_id: str) -> list[str]: ...

    def licences_of(self, tenant_id: str, user_id: str) -> list[Licence]: ...

    def holders_many(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]: ...

    def holders_after(self, tenant_id: str, subscription_id: str, after: str | None, limit: int) -> list[str]: ...

    def put(self, licences: Iterable[Licence]) -> int: ...

    def migrate(self, tenant_id: str, upgrade_id: str, user_ids: Sequence[str], source_subscription_id: str,
                target_subscription_id: str, target_sku: str) -> MigrationResult: ...

    def sweep(self, tenant_id: str, upgrade_id: str, source_subscription_id: str, target_subscription_id: str,
              target_sku: str) -> MigrationResult: ...

    def swept(self, upgrade_id: str) -> int: ...

    def claim_upgrades(self, claims: Iterable[tuple[str, str, str]], now_ms: int,
                       own: bool = True) -> dict[tuple[str, str], "Claim"]: ...

    def renew_claim(self, upgrade_id: str, tenant_id: str, now_ms: int) -> None: ...

    def resets(self, upgrade_id: str) -> list[tuple[str, str, str, str, tuple[str, ...]]]: ...


class SettlingRead(NamedTuple):
    """What settling an upgrade reads of the directory (`consumers/settle.py`)."""

    late: bool  # someone still holds the source licence: the sweep has users to move
    swept: int
    resets: list[tuple[str, str, str, str, tuple[str, ...]]]


def settling_read(directory: "LicenceDirectory", upgrade_id: str, tenant_id: str,
                  source_subscription_id: str) -> SettlingRead:
    """One upgrade's `SettlingRead`, as three reads of `directory` (a licence API serves a
    poll's at once: `LicenceApiDirectory.settling_reads`)."""
    return SettlingRead(bool(directory.holders_after(tenant_id, source_subscription_id, None, 1)),
                        directory.swept(upgrade_id), directory.resets(upgrade_id))


class SqliteDirectory:
    """The embedded licence directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit is in the WAL on disk before the worker's Kafka transaction
        # records its batch done (and billable). NORMAL syncs only at checkpoints, so a power
        # cut or a crash of the host (not of a process) could forget the last batches, or
        # the sweep, after the switch was billed (docs/CONTRACT.md refinement 34).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.executescript(DDL)

    @classmethod
    def for_settings(cls, settings: Settings) -> "SqliteDirectory":
        return cls(cls.path_for(settings))

    @staticmethod
    def path_for(settings: Settings) -> Path:
        """Where the embedded directory of these settings lives."""
        return settings.data_dir / "directory.sqlite3"

    def __str__(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._db.close()

    # -- reads -----------------------------------------------------------------
    def count_holders(self, tenant_id: str, subscription_id: str) -> int:
        row = self._db.execute("SELECT count(*) FROM licences WHERE tenant_id=? AND subscription_id=?",
                               (tenant_id, subscription_id)).fetchone()
        return row[0]

    def holders(self, tenant_id: str, subscription_id: str) -> list[str]:
        rows = self._db.execute("SELECT user_id FROM licences WHERE tenant_id=? AND subscription_id=? ORDER BY user_id",
                                (tenant_id, subscription_id))
        return [r[0] for r in rows]

    def holders_after(self, tenant_id: str, subscription_id: str, after: str | None, limit: int) -> list[str]:
        """The next `limit` holders in user-id order after `after` (None: from the first): a
        chained migration's next batch."""
        rows = self._db.execute("SELECT user_id FROM licences WHERE tenant_id=? AND subscription_id=? AND user_id > ? "
                                "ORDER BY user_id LIMIT ?", (tenant_id, subscription_id, after or "", limit))
        return [r[0] for r in rows]

    def holders_many(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        """`holders` for many (tenant_id, subscription_id) pairs in few queries."""
        wanted = list(dict.fromkeys(pairs))
        found: dict[tuple[str, str], list[str]] = {pair: [] for pair in wanted}
        # The pairs go in as one JSON array joined on the primary key: one index lookup
        # per pair (a row-value `IN (VALUES …)` would scan the whole table instead).
        for i in range(0, len(wanted), 5000):
            rows = self._db.execute(
                "SELECT l.tenant_id, l.subscription_id, l.user_id FROM json_each(?) AS j JOIN licences AS l "
                "ON l.tenant_id = json_extract(j.value, '$[0]') AND l.subscription_id = json_extract(j.value, '$[1]') "
                "ORDER BY l.tenant_id, l.subscription_id, l.user_id",
                (json.dumps(wanted[i:i + 5000]),)).fetchall()
            for tenant_id, subscription_id, user_id in rows:
                found[(tenant_id, subscription_id)].append(user_id)
        return found

    def licences_of(self, tenant_id: str, user_id: str) -> list[Licence]:
        rows = self._db.execute("SELECT tenant_id, user_id, subscription_id, sku, disabled_services FROM licences "
                                "WHERE tenant_id=? AND user_id=? ORDER BY subscription_id", (tenant_id, user_id))
        return [Licence(t, u, s, k, services(d)) for t, u, s, k, d in rows]

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM licences").fetchone()[0]

    def all(self) -> Iterable[tuple]:
        return self._db.execute("SELECT tenant_id, user_id, subscription_id, sku, disabled_services FROM licences "
                                "ORDER BY tenant_id, user_id, subscription_id")

    def resets(self, upgrade_id: str) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
        """(tenant_id, user_id, subscription_id, sku, disabled_services) recorded for an upgrade."""
        rows = self._db.execute("SELECT tenant_id, user_id, subscription_id, sku, disabled_services FROM service_resets "
                                "WHERE upgrade_id=? ORDER BY user_id", (upgrade_id,))
        return [(t, u, s, k, services(d)) for t, u, s, k, d in rows]

    # -- writes ----------------------------------------------------------------
    def migrate(self, tenant_id: str, upgrade_id: str, user_ids: Sequence[str], source_subscription_id: str,
                target_subscription_id: str, target_sku: str) -> MigrationResult:
        """Move a batch of users to the target subscription, in one SQLite transaction.

        Each user gets the target licence with every service enabled, the services they
        had disabled are recorded (those of the source licence, or of a target licence
        they already held), then the source licence goes: inside the transaction the
        insert comes before the delete, and outside it both happen at once, so no reader
        ever sees a user without a licence. Licences of other subscriptions stay.
        Repeating a batch changes nothing and reports its users as already migrated.

        Refused (`MigrationRefused`, nothing changed) when the source is the target, or
        the target subscription holds licences of another SKU: it is another
        subscription, and writing over its licences would lose them.
        """
        def fill(db: sqlite3.Connection) -> int:
            db.executemany("INSERT OR IGNORE INTO batch_users VALUES (?)", ((u,) for u in user_ids))
            return len(set(user_ids))

        return self._move(tenant_id, upgrade_id, source_subscription_id, target_subscription_id, target_sku, fill)

    def sweep(self, tenant_id: str, upgrade_id: str, source_subscription_id: str, target_subscription_id: str,
              target_sku: str) -> MigrationResult:
        """Move every user who still holds a source licence (CONTRACT.md §4 r2: users who
        took one after the batches were planned), as `migrate` does, in one transaction;
        they are remembered, so `swept()` counts them however often this is redone."""
        def fill(db: sqlite3.Connection) -> int:
            db.execute("INSERT INTO batch_users SELECT user_id FROM licences WHERE tenant_id = ? AND subscription_id = ?",
                       (tenant_id, source_subscription_id))
            db.execute("INSERT OR IGNORE INTO swept_users SELECT ?, user_id FROM batch_users", (upgrade_id,))
            return db.execute("SELECT count(*) FROM batch_users").fetchone()[0]

        return self._move(tenant_id, upgrade_id, source_subscription_id, target_subscription_id, target_sku, fill)

    def sweep_users(self, tenant_id: str, upgrade_id: str, user_ids: Sequence[str], source_subscription_id: str,
                    target_subscription_id: str, target_sku: str) -> MigrationResult:
        """`sweep`, for those of `user_ids` who still hold a source licence: a licence API
        sweeps a few users per call (the reference licence service's `sweep` moves)."""
        def fill(db: sqlite3.Connection) -> int:
            db.executemany("INSERT OR IGNORE INTO batch_users SELECT user_id FROM licences "
                           "WHERE tenant_id = ? AND subscription_id = ? AND user_id = ?",
                           ((tenant_id, source_subscription_id, u) for u in user_ids))
            db.execute("INSERT OR IGNORE INTO swept_users SELECT ?, user_id FROM batch_users", (upgrade_id,))
            return db.execute("SELECT count(*) FROM batch_users").fetchone()[0]

        return self._move(tenant_id, upgrade_id, source_subscription_id, target_subscription_id, target_sku, fill)

    def _move(self, tenant_id: str, upgrade_id: str, source_subscription_id: str, target_subscription_id: str,
              target_sku: str, fill) -> MigrationResult:
        """One SQLite transaction: refuse an unsafe move, `fill(db)` the temp table `batch_users`
        (it returns how many users it holds), then move them."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._refuse_unsafe(tenant_id, source_subscription_id, target_subscription_id, target_sku)
            db.execute("CREATE TEMP TABLE IF NOT EXISTS batch_users (user_id TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("DELETE FROM batch_users")
            count = fill(db)
            result = self._move_batch_users(tenant_id, upgrade_id, source_subscription_id, target_subscription_id,
                                            target_sku, count)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def swept(self, upgrade_id: str) -> int:
        """How many users `sweep` has moved for an upgrade."""
        return self._db.execute("SELECT count(*) FROM swept_users WHERE upgrade_id = ?", (upgrade_id,)).fetchone()[0]

    def _refuse_unsafe(self, tenant_id: str, source_subscription_id: str, target_subscription_id: str,
                       target_sku: str) -> None:
        # A subscription is of one SKU, so one of its licences tells (a primary-key prefix
        # lookup: counting them would read the whole, growing, target on every batch).
        held = self._db.execute("SELECT sku FROM licences WHERE tenant_id = ? AND subscription_id = ? LIMIT 1",
                                (tenant_id, target_subscription_id)).fetchone()
        refuse_unsafe(source_subscription_id, target_subscription_id, target_sku, held and held[0])

    def _move_batch_users(self, tenant_id: str, upgrade_id: str, source_subscription_id: str,
                          target_subscription_id: str, target_sku: str, batch: int) -> MigrationResult:
        """The users in temp table `batch_users` move from source to target (inside the caller's transaction)."""
        db = self._db
        # CROSS JOIN keeps the batch as the outer loop: one primary-key lookup per user,
        # not a scan of every licence of the subscription for every batch.
        held = "SELECT l.user_id, l.sku, l.disabled_services FROM batch_users b CROSS JOIN licences l " \
               "ON l.tenant_id = ? AND l.subscription_id = ? AND l.user_id = b.user_id"
        db.execute(f"INSERT OR IGNORE INTO service_resets SELECT ?, ?, user_id, ?, sku, disabled_services "
                   f"FROM ({held}) WHERE disabled_services != '[]'",
                   (tenant_id, upgrade_id, source_subscription_id, tenant_id, source_subscription_id))
        # A user who already holds a target licence with services switched off has them
        # reset too (r2): recorded first, like the source licence's.
        db.execute(f"INSERT OR IGNORE INTO service_resets SELECT ?, ?, user_id, ?, sku, disabled_services "
                   f"FROM ({held}) WHERE disabled_services != '[]'",
                   (tenant_id, upgrade_id, target_subscription_id, tenant_id, target_subscription_id))
        db.execute("UPDATE licences SET disabled_services = '[]' WHERE tenant_id = ? AND subscription_id = ? "
                   "AND disabled_services != '[]' AND user_id IN (SELECT user_id FROM batch_users)",
                   (tenant_id, target_subscription_id))
        db.execute(f"INSERT OR IGNORE INTO licences SELECT ?, user_id, ?, ?, '[]' FROM ({held})",
                   (tenant_id, target_subscription_id, target_sku, tenant_id, source_subscription_id))
        migrated = db.execute(
            "DELETE FROM licences WHERE tenant_id = ? AND subscription_id = ? "
            "AND user_id IN (SELECT user_id FROM batch_users)",
            (tenant_id, source_subscription_id)).rowcount
        holding_target = db.execute(
            "SELECT count(*) FROM batch_users b CROSS JOIN licences l "
            "ON l.tenant_id = ? AND l.subscription_id = ? AND l.user_id = b.user_id",
            (tenant_id, target_subscription_id)).fetchone()[0]
        resets = db.execute(
            "SELECT r.user_id, r.disabled_services FROM batch_users b CROSS JOIN service_resets r "
            "ON r.upgrade_id = ? AND r.user_id = b.user_id ORDER BY r.user_id", (upgrade_id,)).fetchall()
        return MigrationResult(migrated, holding_target - migrated, batch - holding_target,
                               [(u, services(d)) for u, d in resets])

    def claim_upgrades(self, claims: Iterable[tuple[str, str, str]], now_ms: int,
                       own: bool = True) -> dict[tuple[str, str], Claim]:
        """Record each (upgrade_id, tenant_id, event_id) whose tenant has not sent that id
        before as seen at `now_ms` and, if `own` (valid requests), make each id that nobody
        owns yet its tenant's; return each (upgrade_id, tenant_id)'s `Claim`."""
        wanted = list(dict.fromkeys(claims))
        if not wanted:
            return {}
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if own:
                db.executemany("INSERT OR IGNORE INTO upgrade_owners VALUES (?, ?)", [(u, t) for u, t, _ in wanted])
            before: dict[tuple[str, str], tuple[str | None, str, int]] = {}
            pairs = [[u, t] for u, t, _ in wanted]
            for i in range(0, len(pairs), 5000):
                rows = db.execute(
                    "SELECT j.value ->> 0, j.value ->> 1, o.tenant_id, s.event_id, s.seen_at FROM json_each(?) AS j "
                    "LEFT JOIN upgrade_sightings AS s ON s.upgrade_id = j.value ->> 0 AND s.tenant_id = j.value ->> 1 "
                    "LEFT JOIN upgrade_owners AS o ON o.upgrade_id = j.value ->> 0", (json.dumps(pairs[i:i + 5000]),))
                before.update(((u, t), (owner, e, at)) for u, t, owner, e, at in rows)
            db.executemany("INSERT OR IGNORE INTO upgrade_sightings VALUES (?, ?, ?, ?)",
                           [(u, t, e, now_ms) for u, t, e in wanted])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return first_claims(wanted, before, now_ms)

    def renew_claim(self, upgrade_id: str, tenant_id: str, now_ms: int) -> None:
        """The tenant's first request with `upgrade_id` is being handled again now."""
        self._db.execute("UPDATE upgrade_sightings SET seen_at = ? WHERE upgrade_id = ? AND tenant_id = ?",
                         (now_ms, upgrade_id, tenant_id))

    def put(self, licences: Iterable[Licence], replace_all: bool = False) -> int:
        rows = licence_rows(licences)
        self._write_rows(rows, replace_all)
        return len(rows)

    def _write_rows(self, rows: Sequence[tuple], replace_all: bool) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if replace_all:
                self._db.execute("DELETE FROM licences")
            self._db.executemany("INSERT OR REPLACE INTO licences VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


def open_directory(settings: Settings) -> LicenceDirectory:
    """The licence directory the settings name: PostgreSQL for `PLANSHIFT_DIRECTORY_URL`
    (shared by hosts), else the embedded SQLite file under `PLANSHIFT_DATA_DIR` (one host)."""
    if settings.directory_url and settings.directory_url.startswith(("http://", "https://")):
        from planshift.storage.licence_api import LicenceApiDirectory

        return LicenceApiDirectory.for_settings(settings)
    if settings.directory_url:
        from planshift.storage.postgres import PostgresDirectory

        return PostgresDirectory(settings.directory_url)
    return SqliteDirectory.for_settings(settings)


def _check_table(table: pa.Table, path: Path) -> list[tuple]:
    missing = [f.name for f in PARQUET_SCHEMA if f.name not in table.column_names]
    if missing:
        raise DirectoryError(f"{path}: missing column(s) {', '.join(missing)}; "
                             f"expected {', '.join(PARQUET_SCHEMA.names)}")
    for f in PARQUET_SCHEMA:
        actual = table.schema.field(f.name).type
        compatible = (pa.types.is_string(actual) or pa.types.is_large_string(actual)) if f.name != "disabled_services" \
            else ((pa.types.is_list(actual) or pa.types.is_large_list(actual))
                  and (pa.types.is_string(actual.value_type) or pa.types.is_large_string(actual.value_type)))
        if not compatible:
            raise DirectoryError(f"{path}: column {f.name} is {actual}, expected {f.type}")
    for name in PARQUET_SCHEMA.names[:4]:
        nulls = table.column(name).null_count
        if nulls:
            raise DirectoryError(f"{path}: column {name} has {nulls} empty value(s)")
    columns = [table.column(n).to_pylist() for n in PARQUET_SCHEMA.names]
    rows = []
    seen: set[tuple[str, str, str]] = set()
    for i, (tenant, user, sub, sku, disabled) in enumerate(zip(*columns)):
        key = (tenant, sub, user)
        if key in seen:
            raise DirectoryError(f"{path}: row {i}: user {user} holds subscription {sub} of tenant {tenant} twice")
        seen.add(key)
        rows.append((tenant, user, sub, sku, json.dumps([s for s in (disabled or []) if s is not None])))
    return rows


def import_parquet(directory: LicenceDirectory, path: Path, replace_all: bool = False) -> int:
    """Load a Parquet file into the directory in one transaction; a bad file changes nothing."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DirectoryError(f"{path}: no such file") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DirectoryError(f"{path}: not a Parquet file ({exc})") from None
    rows = _check_table(table, path)
    directory._write_rows(rows, replace_all)
    return len(rows)


def export_parquet(directory: LicenceDirectory, path: Path) -> int:
    """Write the whole directory to a Parquet file (atomically: a temporary file, then a rename)."""
    tenants, users, subs, skus, disabled = [], [], [], [], []
    for t, u, s, k, d in directory.all():
        tenants.append(t)
        users.append(u)
        subs.append(s)
        skus.append(k)
        disabled.append(json.loads(d))
    table = pa.table([tenants, users, subs, skus, disabled], schema=PARQUET_SCHEMA)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return table.num_rows

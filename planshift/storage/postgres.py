"""The licence directory on PostgreSQL (`PLANSHIFT_DIRECTORY_URL=postgresql://…`): one
directory shared by migration workers, intake and settlement on several hosts.

The same tables and the same semantics as the embedded `SqliteDirectory` (CONTRACT.md
§5; docs/CONTRACT.md refinements 20, 22, 26): each batch moves in one transaction, the
target licence written before the source one is removed, repeatable, its users'
switched-off services recorded before they are reset; the first valid request of an
`upgrade_id` makes it its tenant's; each tenant's first request with an id is kept for
good. Lists of keys go in as arrays on the primary key (`= ANY`, `unnest`), one round
trip per statement for a whole batch.

Transactions run at READ COMMITTED, which is enough: a batch's rows are its own users',
and an insert that meets a concurrent one of the same key waits for it and then does
nothing (`ON CONFLICT DO NOTHING`), so two workers never both migrate one user nor two
intakes both own one id. The schema is made on first use under an advisory lock, so
processes starting together do not race to create it.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from planshift.logs import get_logger
from planshift.storage.directory import (
    Claim,
    DirectoryError,
    Licence,
    MigrationResult,
    first_claims,
    licence_rows,
    refuse_unsafe,
    services,
)

log = get_logger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS licences (
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    disabled_services TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant_id, subscription_id, user_id)
);
CREATE INDEX IF NOT EXISTS licences_by_user ON licences (tenant_id, user_id);
CREATE TABLE IF NOT EXISTS service_resets (
    tenant_id TEXT NOT NULL,
    upgrade_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    disabled_services TEXT NOT NULL,
    PRIMARY KEY (upgrade_id, user_id)
);
CREATE TABLE IF NOT EXISTS upgrade_owners (
    upgrade_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS upgrade_sightings (
    upgrade_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (upgrade_id, tenant_id)
);
CREATE TABLE IF NOT EXISTS swept_users (
    upgrade_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (upgrade_id, user_id)
);
"""
SCHEMA_LOCK = 0x706C616E  # pg_advisory_xact_lock key while the schema is made ("plan")


# A batch's move, in one statement (one round trip). Its parts read one snapshot, taken
# before any of them writes: `source` and `target` are the batch's licences as they were.
# What was switched off is recorded (from the source licence, and from a target licence a
# user already held); the target licences are reset and the missing ones given; the source
# licences go. All of it commits or none of it, so no reader ever sees a user without a
# licence. It returns the users moved now, the users holding the target after it, and every
# reset recorded for the batch's users (before, and now).
#
# Every read is a lookup per user of the batch (`LATERAL … OFFSET 0`), and the writes go to
# the rows those lookups found (by `ctid`, within the statement), whatever the planner's
# statistics say. A new target subscription has no rows when the table was last analysed,
# so the planner believed "(tenant, target)" matched one row and scanned every target
# licence given so far for each batch: a migration that slowed down as it went (measured:
# 35 ms for a batch of 500 after 20,000 users, 7 of them in that scan). Likewise the
# upgrade's recorded resets, which may number hundreds of thousands.
MOVE = """
WITH batch AS (SELECT unnest(%(users)s::text[]) AS user_id),
source AS (SELECT l.* FROM batch b CROSS JOIN LATERAL
           (SELECT ctid AS row_id, user_id, sku, disabled_services FROM licences
            WHERE tenant_id = %(tenant)s AND subscription_id = %(source)s AND user_id = b.user_id OFFSET 0) l),
target AS (SELECT l.* FROM batch b CROSS JOIN LATERAL
           (SELECT ctid AS row_id, user_id, sku, disabled_services FROM licences
            WHERE tenant_id = %(tenant)s AND subscription_id = %(target)s AND user_id = b.user_id OFFSET 0) l),
recorded AS (SELECT r.user_id, r.disabled_services FROM batch b CROSS JOIN LATERAL
             (SELECT user_id, disabled_services FROM service_resets
              WHERE upgrade_id = %(upgrade)s AND user_id = b.user_id OFFSET 0) r),
noted AS (INSERT INTO service_resets
          SELECT %(tenant)s, %(upgrade)s, user_id, %(source)s, sku, disabled_services FROM source
          WHERE disabled_services <> '[]'
          UNION ALL
          SELECT %(tenant)s, %(upgrade)s, user_id, %(target)s, sku, disabled_services FROM target
          WHERE disabled_services <> '[]'
          ON CONFLICT DO NOTHING RETURNING user_id, disabled_services),
reset AS (UPDATE licences SET disabled_services = '[]'
          WHERE ctid = ANY(ARRAY(SELECT row_id FROM target WHERE disabled_services <> '[]'))),
given AS (INSERT INTO licences SELECT %(tenant)s, user_id, %(target)s, %(sku)s, '[]' FROM source
          ON CONFLICT DO NOTHING RETURNING 1),
removed AS (DELETE FROM licences
            WHERE ctid = ANY(ARRAY(SELECT row_id FROM source))
            RETURNING 1)
SELECT (SELECT count(*) FROM removed),
       (SELECT count(*) FROM target) + (SELECT count(*) FROM given),
       (SELECT array_agg(ARRAY[user_id, disabled_services])
        FROM (SELECT * FROM recorded UNION SELECT * FROM noted) all_resets)
"""


# The SKU of a subscription, from any holder. In the key's order: a prepared statement's
# generic plan would otherwise scan the table for a subscription with few holders yet
# (measured: 4.4 ms a batch, 40,000 users into a migration).
TARGET_SKU = ("SELECT sku FROM licences WHERE tenant_id = %s AND subscription_id = %s "
              "ORDER BY tenant_id, subscription_id, user_id LIMIT 1")


# A batch's directory commit must outlast a crash of the database server: the worker's Kafka
# transaction, which records the batch done and bills it, commits right after it. With
# `synchronous_commit = off` (a server default some choose for speed) a commit is
# acknowledged before its WAL is flushed, and a crash of the server forgets it while the
# batch stays done. So each connection of the directory flushes its own commits
# (`local`: on this server; a stricter setting, waiting for standbys too, is kept as it
# is). `fsync = off` cannot be set per connection: the directory warns of it, once.
DURABLE_COMMITS = ("SELECT current_setting('fsync'), CASE WHEN current_setting('synchronous_commit') = 'off' "
                   "THEN set_config('synchronous_commit', 'local', false) END")
_WARNED: set[str] = set()


class DirectoryUnavailable(DirectoryError):
    """The database server cannot be reached (at start: the process says so and stops)."""


class PostgresDirectory:
    """The licence directory in a PostgreSQL database."""

    def __init__(self, url: str):
        self.url = url
        self._db = self._connect()
        with self._db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.db.execute(DDL)

    def _connect(self):
        import psycopg

        try:
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise DirectoryUnavailable(f"cannot reach the licence directory at {_redacted(self.url)}: "
                                       f"{str(exc).strip().splitlines()[0]}") from None
        fsync, _ = db.execute(DURABLE_COMMITS).fetchone()
        if fsync != "on" and self.url not in _WARNED:
            _WARNED.add(self.url)
            log.warning("the licence directory's server runs with fsync off: a crash of its machine can "
                        "lose or corrupt licences that planshift has reported moved", directory=str(self))
        return db

    @property
    def db(self):
        """The connection; a new one if the last broke (a server restart, a network cut):
        the call that met the break failed and is retried by its caller."""
        if self._db.broken or self._db.closed:
            self._db = self._connect()
        return self._db

    def __str__(self) -> str:
        return _redacted(self.url)  # where it lives, for messages: without the password

    def close(self) -> None:
        self._db.close()

    def _rows(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self.db.execute(sql, params).fetchall()

    # -- reads -----------------------------------------------------------------
    def count_holders(self, tenant_id: str, subscription_id: str) -> int:
        return self._rows("SELECT count(*) FROM licences WHERE tenant_id = %s AND subscription_id = %s",
                          (tenant_id, subscription_id))[0][0]

    def holders(self, tenant_id: str, subscription_id: str) -> list[str]:
        return [r[0] for r in self._rows("SELECT user_id FROM licences WHERE tenant_id = %s AND subscription_id = %s "
                                         "ORDER BY user_id", (tenant_id, subscription_id))]

    def holders_after(self, tenant_id: str, subscription_id: str, after: str | None, limit: int) -> list[str]:
        return [r[0] for r in self._rows(
            "SELECT user_id FROM licences WHERE tenant_id = %s AND subscription_id = %s AND user_id > %s "
            "ORDER BY user_id LIMIT %s", (tenant_id, subscription_id, after or "", limit))]

    def holders_many(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        """`holders` for many (tenant_id, subscription_id) pairs in one query."""
        wanted = list(dict.fromkeys(pairs))
        found: dict[tuple[str, str], list[str]] = {pair: [] for pair in wanted}
        if not wanted:
            return found
        rows = self._rows(
            "SELECT l.tenant_id, l.subscription_id, l.user_id FROM unnest(%s::text[], %s::text[]) AS w(t, s) "
            "JOIN licences AS l ON l.tenant_id = w.t AND l.subscription_id = w.s "
            "ORDER BY l.tenant_id, l.subscription_id, l.user_id",
            ([t for t, _ in wanted], [s for _, s in wanted]))
        for tenant_id, subscription_id, user_id in rows:
            found[(tenant_id, subscription_id)].append(user_id)
        return found

    def licences_of(self, tenant_id: str, user_id: str) -> list[Licence]:
        rows = self._rows("SELECT tenant_id, user_id, subscription_id, sku, disabled_services FROM licences "
                          "WHERE tenant_id = %s AND user_id = %s ORDER BY subscription_id", (tenant_id, user_id))
        return [Licence(t, u, s, k, services(d)) for t, u, s, k, d in rows]

    def count(self) -> int:
        return self._rows("SELECT count(*) FROM licences")[0][0]

    def all(self) -> Iterator[tuple]:
        """Every licence, in order (a server-side cursor: the export need not hold them all twice)."""
        db = self.db
        with db.transaction(), db.cursor(name="all_licences") as cursor:
            cursor.execute("SELECT tenant_id, user_id, subscription_id, sku, disabled_services FROM licences "
                           "ORDER BY tenant_id, user_id, subscription_id")
            yield from cursor

    def resets(self, upgrade_id: str) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
        rows = self._rows("SELECT tenant_id, user_id, subscription_id, sku, disabled_services FROM service_resets "
                          "WHERE upgrade_id = %s ORDER BY user_id", (upgrade_id,))
        return [(t, u, s, k, services(d)) for t, u, s, k, d in rows]

    def swept(self, upgrade_id: str) -> int:
        return self._rows("SELECT count(*) FROM swept_users WHERE upgrade_id = %s", (upgrade_id,))[0][0]

    # -- writes ----------------------------------------------------------------
    def migrate(self, tenant_id: str, upgrade_id: str, user_ids: Sequence[str], source_subscription_id: str,
                target_subscription_id: str, target_sku: str) -> MigrationResult:
        """Move a batch of users to the target subscription in one transaction (as
        `SqliteDirectory.migrate`, whose docstring says the rules)."""
        return self._move(tenant_id, upgrade_id, source_subscription_id, target_subscription_id, target_sku,
                          lambda: sorted(set(user_ids)))

    def sweep(self, tenant_id: str, upgrade_id: str, source_subscription_id: str, target_subscription_id: str,
              target_sku: str) -> MigrationResult:
        """Move every user who still holds a source licence, remembered for `swept()`."""
        def fill() -> list[str]:
            users = self.holders(tenant_id, source_subscription_id)
            self.db.execute("INSERT INTO swept_users SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
                            (upgrade_id, users))
            return users

        return self._move(tenant_id, upgrade_id, source_subscription_id, target_subscription_id, target_sku, fill)

    def _move(self, tenant_id: str, upgrade_id: str, source: str, target: str, target_sku: str,
              fill) -> MigrationResult:
        """One transaction: refuse an unsafe move, then move the users `fill()` returns, in
        one statement (`MOVE`)."""
        db = self.db
        with db.transaction():
            held = self._rows(TARGET_SKU, (tenant_id, target))
            refuse_unsafe(source, target, target_sku, held[0][0] if held else None)
            users = fill()
            migrated, holding_target, resets = self._rows(MOVE, {
                "tenant": tenant_id, "upgrade": upgrade_id, "source": source, "target": target,
                "sku": target_sku, "users": users})[0]
        return MigrationResult(migrated, holding_target - migrated, len(users) - holding_target,
                               sorted((u, services(d)) for u, d in resets or ()))

    def claim_upgrades(self, claims: Iterable[tuple[str, str, str]], now_ms: int,
                       own: bool = True) -> dict[tuple[str, str], Claim]:
        """As `SqliteDirectory.claim_upgrades`."""
        wanted = list(dict.fromkeys(claims))
        if not wanted:
            return {}
        ids, tenants, events = [u for u, _, _ in wanted], [t for _, t, _ in wanted], [e for _, _, e in wanted]
        db = self.db
        with db.transaction():
            if own:
                db.execute("INSERT INTO upgrade_owners SELECT * FROM unnest(%s::text[], %s::text[]) "
                           "ON CONFLICT DO NOTHING", (ids, tenants))
            before = {(u, t): (owner, e, at) for u, t, owner, e, at in self._rows(
                "SELECT w.u, w.t, o.tenant_id, s.event_id, s.seen_at FROM unnest(%s::text[], %s::text[]) AS w(u, t) "
                "LEFT JOIN upgrade_sightings AS s ON s.upgrade_id = w.u AND s.tenant_id = w.t "
                "LEFT JOIN upgrade_owners AS o ON o.upgrade_id = w.u", (ids, tenants))}
            db.execute("INSERT INTO upgrade_sightings SELECT w.u, w.t, w.e, %s "
                       "FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS w(u, t, e, n) "
                       "ORDER BY w.n ON CONFLICT DO NOTHING", (now_ms, ids, tenants, events))
        return first_claims(wanted, before, now_ms)

    def renew_claim(self, upgrade_id: str, tenant_id: str, now_ms: int) -> None:
        self.db.execute("UPDATE upgrade_sightings SET seen_at = %s WHERE upgrade_id = %s AND tenant_id = %s",
                         (now_ms, upgrade_id, tenant_id))

    def put(self, licences: Iterable[Licence], replace_all: bool = False) -> int:
        rows = licence_rows(licences)
        self._write_rows(rows, replace_all)
        return len(rows)

    def _write_rows(self, rows: Sequence[tuple], replace_all: bool) -> None:
        """Every row in one transaction, through COPY (an import of millions of licences)."""
        db = self.db
        with db.transaction():
            if replace_all:
                db.execute("DELETE FROM licences")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE licences INCLUDING DEFAULTS) "
                       "ON COMMIT DELETE ROWS")
            with db.cursor().copy("COPY incoming FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            db.execute("INSERT INTO licences SELECT * FROM incoming ON CONFLICT (tenant_id, subscription_id, user_id) "
                       "DO UPDATE SET sku = excluded.sku, disabled_services = excluded.disabled_services")
        db.execute("ANALYZE licences")  # the planner's view of a table that just grew by an import


TABLES = ("licences", "service_resets", "upgrade_owners", "upgrade_sightings", "swept_users")


def copy_from_sqlite(sqlite_path, directory: PostgresDirectory) -> dict[str, int]:
    """Copy every table of an embedded directory file into `directory`, in one transaction:
    the licences, and also what keeps upgrades idempotent (each id's owner, each tenant's
    first request with it, the recorded resets, the swept users). Rows already there stay
    (a copy run twice changes nothing). Returns the rows read per table."""
    import sqlite3

    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    copied: dict[str, int] = {}
    db = directory.db
    try:
        with db.transaction():
            for table in TABLES:
                if not source.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                      (table,)).fetchone():
                    copied[table] = 0  # a file made before that table existed
                    continue
                db.execute(f"CREATE TEMP TABLE incoming_{table} (LIKE {table}) ON COMMIT DROP")
                rows = 0
                with db.cursor().copy(f"COPY incoming_{table} FROM STDIN") as copy:
                    for row in source.execute(f"SELECT * FROM {table}"):
                        copy.write_row(row)
                        rows += 1
                db.execute(f"INSERT INTO {table} SELECT * FROM incoming_{table} ON CONFLICT DO NOTHING")
                copied[table] = rows
    finally:
        source.close()
    return copied


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))

"""The licence directories (the embedded SQLite file and PostgreSQL) and `planshift directory import|export`."""

from __future__ import annotations

import multiprocessing

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli import main
from planshift.storage.directory import (
    PARQUET_SCHEMA,
    DirectoryError,
    Licence,
    SqliteDirectory,
    export_parquet,
    import_parquet,
)


def open_one(tmp_path, directory_url):
    """The directory under test: SQLite in tmp_path, or the test's PostgreSQL database."""
    from planshift.settings import Settings
    from planshift.storage.directory import open_directory

    return open_directory(Settings.from_env({}).with_(data_dir=tmp_path, directory_url=directory_url))


def write(path, rows, schema=PARQUET_SCHEMA):
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    pq.write_table(pa.table([list(c) for c in columns], schema=schema), path)


ROWS = [
    ("contoso", "u1", "contoso-std", "M365_BUSINESS_STANDARD", ["SHAREPOINT"]),
    ("contoso", "u2", "contoso-std", "M365_BUSINESS_STANDARD", []),
    ("contoso", "u2", "contoso-exo", "EXCHANGE_ONLINE_PLAN_1", []),
    ("fabrikam", "u1", "fabrikam-std", "M365_BUSINESS_STANDARD", None),
]


def test_import_then_export_round_trips(tmp_path, directory_url):
    directory = open_one(tmp_path, directory_url)
    write(tmp_path / "in.parquet", ROWS)
    assert import_parquet(directory, tmp_path / "in.parquet") == 4
    assert directory.holders("contoso", "contoso-std") == ["u1", "u2"]
    assert directory.count_holders("contoso", "contoso-exo") == 1
    assert [lic.subscription_id for lic in directory.licences_of("contoso", "u2")] == ["contoso-exo", "contoso-std"]
    assert directory.licences_of("contoso", "u1")[0].disabled_services == ("SHAREPOINT",)

    assert export_parquet(directory, tmp_path / "out.parquet") == 4
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.equals(PARQUET_SCHEMA)
    assert sorted(table.to_pylist(), key=lambda r: (r["tenant_id"], r["user_id"], r["subscription_id"])) == sorted(
        [dict(zip(PARQUET_SCHEMA.names, (*r[:4], r[4] or []))) for r in ROWS],
        key=lambda r: (r["tenant_id"], r["user_id"], r["subscription_id"]))


@pytest.mark.parametrize("make,fragment", [
    (lambda p: write(p, [r[:4] for r in ROWS], pa.schema(list(PARQUET_SCHEMA)[:4])), "missing column(s) disabled_services"),
    (lambda p: write(p, [(*r[:3], 7, []) for r in ROWS],
                     pa.schema([*list(PARQUET_SCHEMA)[:3], ("sku", pa.int64()), PARQUET_SCHEMA.field(4)])),
     "column sku is int64"),
    (lambda p: write(p, [*ROWS, ("contoso", None, "contoso-std", "M365_BUSINESS_STANDARD", [])]),
     "column user_id has 1 empty value"),
    (lambda p: write(p, [*ROWS, ROWS[0]]), "holds subscription contoso-std of tenant contoso twice"),
    (lambda p: p.write_text("tenant_id,user_id\n"), "not a Parquet file"),
])
def test_a_bad_file_is_refused_and_changes_nothing(tmp_path, make, fragment, directory_url):
    directory = open_one(tmp_path, directory_url)
    directory.put([Licence("kept", "u0", "kept-sub", "M365_BUSINESS_BASIC")])
    make(tmp_path / "bad.parquet")
    with pytest.raises(DirectoryError) as caught:
        import_parquet(directory, tmp_path / "bad.parquet", replace_all=True)
    assert fragment in str(caught.value)
    assert directory.count() == 1 and directory.holders("kept", "kept-sub") == ["u0"]


def test_cli_import_export_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLANSHIFT_DATA_DIR", str(tmp_path / "var"))
    write(tmp_path / "in.parquet", ROWS)
    assert main(["directory", "import", str(tmp_path / "in.parquet")]) == 0
    assert "imported 4 licences" in capsys.readouterr().out
    assert main(["directory", "export", str(tmp_path / "out.parquet")]) == 0
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 4
    assert main(["directory", "import", str(tmp_path / "absent.parquet")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"planshift: error: {tmp_path / 'absent.parquet'}: no such file"]


def _writer(folder, directory_url, tenant, count):
    directory = open_one(folder, directory_url)
    for i in range(count):
        directory.put([Licence(tenant, f"u{i}", f"{tenant}-sub", "M365_BUSINESS_BASIC")])
    directory.close()


def test_several_processes_write_at_once(tmp_path, directory_url):
    open_one(tmp_path, directory_url).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, directory_url, f"t{n}", 200)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    directory = open_one(tmp_path, directory_url)
    assert directory.count() == 800
    directory.close()


def test_claims_keep_each_ids_owner_and_each_tenants_first_request_for_good(tmp_path, directory_url):
    from planshift.storage.directory import Claim

    directory = open_one(tmp_path, directory_url)
    assert directory.claim_upgrades([("ord-1", "contoso", "e-1"), ("ord-2", "contoso", "e-2")], 1000) == {
        ("ord-1", "contoso"): Claim("contoso", "e-1", 1000), ("ord-2", "contoso"): Claim("contoso", "e-2", 1000)}
    # Another tenant's request with ord-1 finds it owned; its own first sighting is its own.
    assert directory.claim_upgrades([("ord-1", "fabrikam", "e-9")], 2000) == {
        ("ord-1", "fabrikam"): Claim("contoso", "e-9", 2000)}
    # An invalid request (own=False) takes no id: a valid one of another tenant still can.
    assert directory.claim_upgrades([("ord-3", "fabrikam", "e-10")], 3000, own=False) == {
        ("ord-3", "fabrikam"): Claim(None, "e-10", 3000)}
    assert directory.claim_upgrades([("ord-3", "contoso", "e-11")], 4000) == {
        ("ord-3", "contoso"): Claim("contoso", "e-11", 4000)}
    # The first sighting stays: a later event of the same tenant with the same id finds it.
    assert directory.claim_upgrades([("ord-1", "contoso", "e-12")], 5000)[("ord-1", "contoso")] == \
        Claim("contoso", "e-1", 1000)
    # Handling that first request again moves its time on (a redo, a re-drive).
    directory.renew_claim("ord-1", "contoso", 6000)
    assert directory.claim_upgrades([("ord-1", "contoso", "e-1")], 7000)[("ord-1", "contoso")] == \
        Claim("contoso", "e-1", 6000)
    directory.close()


def test_two_events_with_one_new_id_in_one_claim_make_the_first_the_tenants_first(tmp_path, directory_url):
    from planshift.storage.directory import Claim

    directory = open_one(tmp_path, directory_url)
    assert directory.claim_upgrades([("ord-1", "contoso", "e-1"), ("ord-1", "contoso", "e-2")], 1000) == {
        ("ord-1", "contoso"): Claim("contoso", "e-1", 1000)}
    directory.close()


def test_cli_moves_a_directory_from_sqlite_to_postgresql_as_the_docs_say(tmp_path, monkeypatch, capsys, postgres_url):
    monkeypatch.setenv("PLANSHIFT_DATA_DIR", str(tmp_path / "var"))
    write(tmp_path / "in.parquet", ROWS)
    assert main(["directory", "import", str(tmp_path / "in.parquet")]) == 0  # the embedded one
    assert main(["directory", "export", str(tmp_path / "moving.parquet")]) == 0
    monkeypatch.setenv("PLANSHIFT_DIRECTORY_URL", postgres_url)
    assert main(["directory", "import", str(tmp_path / "moving.parquet")]) == 0
    out = capsys.readouterr().out
    assert "imported 4 licences from" in out and "postgresql://" in out
    assert main(["directory", "export", str(tmp_path / "back.parquet")]) == 0
    key = lambda r: (r["tenant_id"], r["user_id"], r["subscription_id"])  # noqa: E731
    assert sorted(pq.read_table(tmp_path / "back.parquet").to_pylist(), key=key) == \
        sorted(pq.read_table(tmp_path / "moving.parquet").to_pylist(), key=key)


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from planshift.ops.broker import free_port

    monkeypatch.setenv("PLANSHIFT_DIRECTORY_URL", f"postgresql://planshift:secret@127.0.0.1:{free_port()}/none")
    assert main(["directory", "export", str(tmp_path / "x.parquet")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("planshift: error: cannot reach the licence directory at "
                                               "postgresql://planshift:***@127.0.0.1:"), err
    assert "secret" not in err[0]
    monkeypatch.setenv("PLANSHIFT_DIRECTORY_URL", "mysql://nope")
    assert main(["directory", "export", str(tmp_path / "x.parquet")]) == 2
    assert "PLANSHIFT_DIRECTORY_URL must be a postgresql://" in capsys.readouterr().err


def test_copy_moves_every_table_so_upgrades_stay_idempotent_on_postgresql(tmp_path, monkeypatch, capsys, postgres_url):
    from planshift.storage.directory import Claim
    from planshift.storage.postgres import PostgresDirectory

    embedded = open_one(tmp_path / "var", None)
    embedded.put([Licence("contoso", "u1", "contoso-std", "M365_BUSINESS_STANDARD", ("SHAREPOINT",)),
                  Licence("contoso", "u2", "contoso-std", "M365_BUSINESS_STANDARD")])
    embedded.claim_upgrades([("ord-1", "contoso", "e-1")], 1000)
    embedded.migrate("contoso", "ord-1", ["u1"], "contoso-std", "contoso-prem", "M365_BUSINESS_PREMIUM")
    embedded.close()
    monkeypatch.setenv("PLANSHIFT_DATA_DIR", str(tmp_path / "var"))
    for _ in range(2):  # twice: nothing changes the second time
        assert main(["directory", "copy", "--to", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "licences 2" in out and "upgrade_owners 1" in out and "upgrade_sightings 1" in out
    moved = PostgresDirectory(postgres_url)
    assert moved.count() == 2 and moved.holders("contoso", "contoso-prem") == ["u1"]
    assert moved.resets("ord-1") == [("contoso", "u1", "contoso-std", "M365_BUSINESS_STANDARD", ("SHAREPOINT",))]
    # The id's first request came along: a repeat is still a repeat after the move.
    assert moved.claim_upgrades([("ord-1", "contoso", "e-2")], 9000) == {("ord-1", "contoso"): Claim("contoso", "e-1", 1000)}
    moved.close()
    assert main(["directory", "copy", "--to", "sqlite:///x"]) == 1
    assert "is not a postgresql:// URL" in capsys.readouterr().err


@pytest.mark.parametrize("plans", ["auto", "force_generic_plan"])
def test_a_postgresql_move_reads_only_its_batch_however_many_hold_the_target(postgres_url, plans):
    """A new target subscription had no rows when the table was last analysed: the planner
    believed one row matched it and, for every batch, scanned every target licence given
    so far (and a prepared statement's generic plan scanned the table for the target's
    SKU), so a migration slowed down as it went. Every lookup of a batch's move is now a
    probe per user, whatever the statistics and whichever plan the server caches."""
    import psycopg

    from planshift.storage.postgres import MOVE, TARGET_SKU, PostgresDirectory

    directory = PostgresDirectory(postgres_url)
    directory.put(Licence("t", f"u{i:05d}", "src", "M365_BUSINESS_STANDARD", ("SHAREPOINT",) if i % 10 == 0 else ())
                  for i in range(6_000))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("ANALYZE licences")  # the target has no holders yet, as at a real upgrade's start
    users = directory.holders("t", "src")
    for i in range(0, 5_000, 500):
        directory.migrate("t", "up", users[i:i + 500], "src", "tgt", "M365_BUSINESS_PREMIUM")
    params = {"tenant": "t", "upgrade": "up", "source": "src", "target": "tgt", "sku": "M365_BUSINESS_PREMIUM",
              "users": users[5_000:5_500]}
    with psycopg.connect(postgres_url) as db:
        db.execute(f"SET plan_cache_mode = {plans}")
        plan = "\n".join(row[0] for row in db.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + MOVE, params))
        db.execute("PREPARE held(text, text) AS " + TARGET_SKU.replace("%s", "$1", 1).replace("%s", "$2", 1))
        held = "\n".join(row[0] for row in db.execute("EXPLAIN (ANALYZE) EXECUTE held('t', 'tgt')"))
        db.rollback()
    removed = [int(line.rsplit(":", 1)[1]) for line in plan.splitlines() if "Rows Removed by Filter" in line]
    assert max(removed, default=0) <= 500, plan  # at most the batch's own rows, not the 5,000 moved before
    assert "Seq Scan on licences" not in plan and "Seq Scan" not in held, held
    # (the explained move was rolled back)
    assert directory.migrate("t", "up", users[5_000:5_500], "src", "tgt", "M365_BUSINESS_PREMIUM").users_migrated == 500
    directory.close()


def test_a_batch_commit_is_flushed_before_kafka_hears_of_it_whatever_the_servers_default(postgres_url, monkeypatch):
    """The worker commits the batch in Kafka (done, billed) right after the directory commit.
    The suite's server acknowledges commits before flushing them (`synchronous_commit =
    off`), and a crash of such a server forgets the last ones: the directory's connections
    flush their own, keep a stricter setting as it is, and say once that fsync is off."""
    import psycopg

    from planshift.storage import postgres
    from planshift.storage.postgres import PostgresDirectory

    with psycopg.connect(postgres_url, autocommit=True) as plain:
        assert plain.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        assert plain.execute("SHOW fsync").fetchone()[0] == "off"
    warnings: list[str] = []
    monkeypatch.setattr(postgres, "log", type("Log", (), {"warning": lambda _, event, **kw: warnings.append(event)})())
    directory = PostgresDirectory(postgres_url)
    again = PostgresDirectory(postgres_url)
    assert directory.db.execute("SHOW synchronous_commit").fetchone()[0] == "local"
    directory.db.close()  # a broken connection is replaced by one that flushes too
    assert directory.db.execute("SHOW synchronous_commit").fetchone()[0] == "local"
    assert warnings == [
        "the licence directory's server runs with fsync off: a crash of its machine can lose or corrupt licences "
        "that planshift has reported moved"]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        database = postgres_url.rsplit("/", 1)[1]
        admin.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = remote_apply')
    stricter = PostgresDirectory(postgres_url)
    assert stricter.db.execute("SHOW synchronous_commit").fetchone()[0] == "remote_apply"
    for d in (directory, again, stricter):
        d.close()


def test_the_embedded_directory_syncs_each_commit(tmp_path):
    """The worker records a batch done in Kafka right after the directory commit: SQLite's
    NORMAL syncs the write-ahead log only at checkpoints, so a power cut could forget a
    batch (or a sweep) already billed; FULL syncs it at every commit."""
    directory = SqliteDirectory(tmp_path / "directory.sqlite3")
    again = SqliteDirectory(tmp_path / "directory.sqlite3")  # a second process's connection
    try:
        for d in (directory, again):
            assert d._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert d._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        directory.close()
        again.close()

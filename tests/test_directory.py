"""The embedded licence directory and `planshift directory import|export`."""

from __future__ import annotations

import multiprocessing
import sqlite3

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


def write(path, rows, schema=PARQUET_SCHEMA):
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    pq.write_table(pa.table([list(c) for c in columns], schema=schema), path)


ROWS = [
    ("contoso", "u1", "contoso-std", "M365_BUSINESS_STANDARD", ["SHAREPOINT"]),
    ("contoso", "u2", "contoso-std", "M365_BUSINESS_STANDARD", []),
    ("contoso", "u2", "contoso-exo", "EXCHANGE_ONLINE_PLAN_1", []),
    ("fabrikam", "u1", "fabrikam-std", "M365_BUSINESS_STANDARD", None),
]


def test_import_then_export_round_trips(tmp_path):
    directory = SqliteDirectory(tmp_path / "d.sqlite3")
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
def test_a_bad_file_is_refused_and_changes_nothing(tmp_path, make, fragment):
    directory = SqliteDirectory(tmp_path / "d.sqlite3")
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


def _writer(path, tenant, count):
    directory = SqliteDirectory(path)
    for i in range(count):
        directory.put([Licence(tenant, f"u{i}", f"{tenant}-sub", "M365_BUSINESS_BASIC")])
    directory.close()


def test_several_processes_write_at_once(tmp_path):
    path = tmp_path / "d.sqlite3"
    SqliteDirectory(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"t{n}", 200)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sqlite3.connect(path).execute("SELECT count(*) FROM licences").fetchone()[0] == 800


def test_a_directory_made_before_claims_kept_their_event_still_opens_and_claims(tmp_path):
    import sqlite3

    from planshift.storage.directory import Claim, SqliteDirectory

    path = tmp_path / "directory.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE upgrade_owners (upgrade_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL) WITHOUT ROWID")
    old.execute("INSERT INTO upgrade_owners VALUES ('ord-old', 'contoso')")
    old.commit()
    old.close()
    directory = SqliteDirectory(path)
    claims = directory.claim_upgrades([("ord-old", "contoso", "e-2"), ("ord-new", "contoso", "e-3")])
    assert claims == {"ord-old": Claim("contoso", None), "ord-new": Claim("contoso", "e-3")}
    assert directory.claim_upgrades([("ord-new", "fabrikam", "e-9")]) == {"ord-new": Claim("contoso", "e-3")}
    directory.close()

"""`planshift directory import|export|copy`: the licence directory (embedded, or PostgreSQL)."""

from __future__ import annotations

import argparse
from pathlib import Path

from planshift.settings import Settings


def register(sub) -> None:
    directory = sub.add_parser("directory", help="the licence directory (PLANSHIFT_DIRECTORY_URL, else SQLite under "
                                                 "PLANSHIFT_DATA_DIR)")
    dsub = directory.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(directory))
    imp = dsub.add_parser("import", help="load licences from Parquet (tenant_id, user_id, subscription_id, sku, "
                                         "disabled_services); a bad file changes nothing")
    imp.add_argument("file", type=Path, metavar="FILE.parquet")
    imp.add_argument("--replace", action="store_true", help="replace the whole directory instead of merging")
    imp.add_argument("--if-empty", action="store_true",
                     help="import only into a directory that holds no licence yet (a seeding step that may run "
                          "again, as docker compose's does: it never puts migrated users back)")
    imp.add_argument("--skip-missing", action="store_true", help="a FILE that does not exist imports nothing")
    imp.set_defaults(handler=directory_import, needs_broker=False)
    exp = dsub.add_parser("export", help="write the whole directory to Parquet")
    exp.add_argument("file", type=Path, metavar="FILE.parquet")
    exp.set_defaults(handler=directory_export, needs_broker=False)
    cp = dsub.add_parser("copy", help="copy the embedded directory, every table, into a PostgreSQL database",
                         description="Copies PLANSHIFT_DATA_DIR/directory.sqlite3 into the database at --to: the "
                                     "licences and what keeps upgrades idempotent (upgrade-id owners, each tenant's "
                                     "first request per id, recorded resets, swept users). Rows already there stay.")
    cp.add_argument("--to", required=True, metavar="postgresql://…", help="the PostgreSQL database to copy into")
    cp.set_defaults(handler=directory_copy, needs_broker=False)


def directory_import(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.storage.directory import import_parquet, open_directory

    if args.replace and args.if_empty:
        from cli.args import fail

        return fail("--replace and --if-empty exclude each other", 2)
    if args.skip_missing and not args.file.exists():
        print(f"{args.file} does not exist: nothing imported")
        return 0
    directory = open_directory(settings)
    if args.if_empty and directory.count():
        print(f"{directory} already holds {directory.count()} licences: nothing imported (--if-empty)")
        return 0
    count = import_parquet(directory, args.file, replace_all=args.replace)
    print(f"imported {count} licences from {args.file} into {directory} "
          f"({directory.count()} licences in all)")
    return 0


def directory_export(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.storage.directory import export_parquet, open_directory

    directory = open_directory(settings)
    count = export_parquet(directory, args.file)
    print(f"exported {count} licences from {directory} to {args.file}")
    return 0


def directory_copy(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.errors import OperationError
    from planshift.storage.directory import SqliteDirectory
    from planshift.storage.postgres import PostgresDirectory, copy_from_sqlite

    if not args.to.startswith(("postgresql://", "postgres://")):
        raise OperationError(f"--to {args.to!r} is not a postgresql:// URL")
    source = SqliteDirectory.path_for(settings)
    if not source.exists():
        raise OperationError(f"no embedded directory at {source}")
    target = PostgresDirectory(args.to)
    try:
        copied = copy_from_sqlite(source, target)
        print(f"copied {source} into {target}: "
              + ", ".join(f"{table} {rows}" for table, rows in copied.items())
              + f" ({target.count()} licences there in all)")
    finally:
        target.close()
    return 0

"""`planshift directory import|export|copy|serve`: the licence directory (embedded, PostgreSQL, or a licence API)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.args import port
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
    srv = dsub.add_parser(
        "serve", help="a reference licence service over the embedded directory, with a vendor's limits",
        description="Serves the licence directory over HTTP with the semantics of Microsoft Graph's licence "
                    "assignment: at most 20 users per call, a write quota per tenant (429 with Retry-After beyond "
                    "it), now and then a 503, a latency per call. A stand-in for a vendor's licence system (as "
                    "'planshift simulate billing' is for billing): point planshift at it with "
                    "PLANSHIFT_DIRECTORY_URL=http://HOST:PORT and pace it with PLANSHIFT_LICENCE_API_QUOTA.")
    srv.add_argument("--port", type=port, default=8090, help="default 8090")
    srv.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    srv.add_argument("--quota", type=quota, default="3000/150", metavar="CALLS/SECONDS",
                     help="write calls per tenant in any window of SECONDS (default 3000/150, Graph's)")
    srv.add_argument("--latency-ms", type=float, default=20.0, metavar="MS", help="time per call (default 20)")
    srv.add_argument("--error-rate", type=rate, default=0.0, metavar="P",
                     help="share of write calls answered 503 (default 0)")
    srv.set_defaults(handler=directory_serve, needs_broker=False)


def quota(text: str):
    from planshift.settings import Quota

    try:
        return Quota.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("must be at least 0 and below 1")
    return value


def directory_serve(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.storage.directory import SqliteDirectory
    from planshift.storage.licence_service import create_service
    from planshift.web.app import run_asgi

    quota_value = args.quota if not isinstance(args.quota, str) else quota(args.quota)
    path = SqliteDirectory.path_for(settings)
    print(f"licence service on http://{args.host}:{args.port}/ over {path}: quota {quota_value} per tenant, "
          f"{args.latency_ms:g} ms per call, {args.error_rate:.1%} answered 503", flush=True)
    run_asgi(create_service(SqliteDirectory(path), quota_value, args.latency_ms, args.error_rate), args.host, args.port)
    return 0


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

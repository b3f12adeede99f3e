"""`planshift serve`: the admins' status page, its JSON API and the upgrade preview."""

from __future__ import annotations

import argparse

from cli.args import port
from planshift.settings import Settings


def register(sub) -> None:
    serve = sub.add_parser(
        "serve", help="the status page for admins (upgrades in flight, completions, rejections) and its JSON API",
        description="Serves, on a real ASGI server (uvicorn, Starlette): / (upgrades in flight with live progress, "
                    "the admin lock, recent completions with their credit, rejections with each reason's remedy, "
                    "dead letters, the last reconciliation), /upgrades/ID (one upgrade's history), "
                    "GET /api/upgrades?tenant=&status=, GET /api/upgrades/ID, GET /api/summary, POST /api/preview "
                    "(what intake would decide for a request; nothing is sent) and /healthz. Reads upgrade.status, "
                    "service.health and the .dlq topics read_committed, without a consumer group; writes nothing.")
    serve.add_argument("--port", type=port, default=8080, help="default 8080")
    serve.add_argument("--host", default="127.0.0.1",
                       help="default 127.0.0.1 (this host only; 0.0.0.0 in a container, behind your sign-in proxy)")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.web.app import serve

    print(f"planshift status page on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    serve(settings, args.host, args.port)
    return 0

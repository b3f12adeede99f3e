"""`planshift health`: ask a running process whether it is alive (or ready), for container
health checks and scripts: exit 0 yes, 1 no (or no answer)."""

from __future__ import annotations

import argparse

from cli.args import port
from planshift.settings import Settings


def register(sub) -> None:
    health = sub.add_parser("health", help="ask a running planshift process for /healthz (or /readyz); exit 0 if so",
                            description="For health checks (docker compose, Kubernetes exec probes): GETs "
                                        "http://HOST:PORT/healthz, or /readyz with --ready, prints its JSON answer "
                                        "and exits 0 when it says yes, 1 when it says no or does not answer.")
    health.add_argument("--port", type=port, default=None,
                        help="the process's metrics port (default PLANSHIFT_METRICS_PORT)")
    health.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (the process's own container)")
    health.add_argument("--ready", action="store_true", help="ask /readyz: joined and every state restored")
    health.add_argument("--timeout", type=float, default=5.0, metavar="S", help="give up after S seconds (default 5)")
    health.set_defaults(handler=run_health, needs_broker=False)


def run_health(args: argparse.Namespace, settings: Settings) -> int:
    import urllib.error
    import urllib.request

    from cli.args import fail

    chosen = args.port if args.port is not None else settings.metrics_port
    if not chosen:
        return fail("no port: pass --port or set PLANSHIFT_METRICS_PORT", 2)
    url = f"http://{args.host}:{chosen}/{'readyz' if args.ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            print(response.read().decode().strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode().strip())
        return 1
    except (urllib.error.URLError, OSError) as exc:
        return fail(f"no answer from {url}: {getattr(exc, 'reason', exc)}")

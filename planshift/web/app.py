"""The article's "Check upgrade status" as a page, on Starlette (ASGI), served by uvicorn.

    GET  /                       upgrades in flight with live progress bars, the admin lock and
                                 its time, a credit check's due date; recent completions with
                                 their credit; rejections with each reason's message and remedy;
                                 dead letters and the last reconciliation
    GET  /upgrades/{id}          one upgrade's history
    GET  /api/upgrades?tenant=&status=&limit=
    GET  /api/upgrades/{id}      one upgrade with its history
    GET  /api/summary            counts by status, dead letters, the last reconciliation
    POST /api/preview            what intake would decide for a request (nothing is sent)
    GET  /healthz                the view's reader is alive

Everything comes from a `StatusView` (`read_committed` `upgrade.status`, `service.health`,
the `.dlq` topics) polled by one background thread, and the reconciliation's Parquet
summary; the page writes nothing. Plain server-rendered HTML; a little script replaces the
live part every second (`/live`), so the page works without it too (it just does not move).
"""

from __future__ import annotations

import contextlib
import html
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from planshift.contract import Status
from planshift.ops.view import StatusView, UpgradeView, preview_request
from planshift.settings import Settings

IN_FLIGHT = (Status.ACCEPTED, Status.CREDIT_CHECK_PENDING, Status.MIGRATING)
RECENT = 25
STALE_S = 30.0  # /healthz fails when the reader has not come round for this long
PREVIEW_MAX_BYTES = 1 << 20


class Follower:
    """Polls the view in a thread of its own until stopped."""

    def __init__(self, view: StatusView):
        self.view = view
        self.last_round = time.monotonic()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.view.poll(250)
                self.error = None
            except Exception as exc:  # a broker restart: keep the page up, say so, try again
                self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(1.0)
            self.last_round = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.view.close()


_read_summaries: dict[tuple[str, float], list[dict[str, Any]]] = {}


def last_reconciliation(settings: Settings) -> dict[str, Any] | None:
    """The newest run of `planshift reconcile`: its date and findings by check and currency.
    (The page asks every second; the Parquet file is read again only when it changes.)"""
    import pyarrow.parquet as pq

    root = settings.data_dir / "reports" / "reconciliation" / "summary"
    runs = sorted(root.glob("run_date=*/part-0.parquet")) if root.exists() else []
    if not runs:
        return None
    newest = runs[-1]
    version = (str(newest), newest.stat().st_mtime)
    rows = _read_summaries.get(version)
    if rows is None:
        _read_summaries.clear()
        rows = _read_summaries[version] = pq.read_table(newest).to_pylist()
    chart = settings.data_dir / "reports" / "reconciliation" / "charts" / \
        f"findings-{newest.parent.name.removeprefix('run_date=')}.png"
    return {"run_date": newest.parent.name.removeprefix("run_date="),
            "written_at": datetime.fromtimestamp(newest.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "findings": [{"check_code": r.get("check_code"), "currency": r.get("currency"),
                          "count": int(r.get("count") or 0), "delta_minor": int(r.get("delta_minor") or 0)}
                         for r in rows],
            "chart": str(chart) if chart.exists() else None}


def create_app(settings: Settings, view: StatusView | None = None, *, follow: bool = True) -> Starlette:
    view = view or StatusView(settings)
    follower = Follower(view)

    def summary() -> dict[str, Any]:
        with view.lock:
            dead = dict(view.dead_letters)
        return {"counts": dict(view.counts()), "dead_letters": dead, "health": dict(view.health),
                "reconciliation": last_reconciliation(settings), "records_read": view.records,
                "reader_error": follower.error}

    async def index(request: Request) -> Response:
        tenant = request.query_params.get("tenant") or None
        form = (f'<form class="filter" method="get" action="/"><label for="tenant">Tenant</label>'
                f'<input id="tenant" name="tenant" value="{_e(tenant)}" placeholder="all tenants">'
                f'<button type="submit">Show</button></form>')
        return HTMLResponse(page("planshift — upgrade status", render_live(view, summary(), tenant), live=True,
                                 before=form))

    async def live(request: Request) -> Response:
        return HTMLResponse(render_live(view, summary(), request.query_params.get("tenant") or None))

    async def upgrade_page(request: Request) -> Response:
        upgrade = view.upgrades.get(request.path_params["upgrade_id"])
        if upgrade is None:
            return HTMLResponse(page("not found", f"<p>No upgrade {_e(request.path_params['upgrade_id'])} on "
                                                  f"upgrade.status (yet).</p><p><a href='/'>All upgrades</a></p>"),
                                status_code=404)
        return HTMLResponse(page(f"{upgrade.upgrade_id} — {upgrade.tenant_id}", render_upgrade(upgrade)))

    async def api_upgrades(request: Request) -> Response:
        tenant, status = request.query_params.get("tenant"), request.query_params.get("status")
        if status is not None and status not in set(Status):
            return _problem(400, f"status must be one of {', '.join(Status)}")
        try:
            limit = int(request.query_params.get("limit", "1000"))
        except ValueError:
            return _problem(400, "limit must be a whole number")
        found = sorted(view.find(tenant=tenant, status=status), key=lambda u: u.updated_at, reverse=True)
        return JSONResponse({"upgrades": [u.as_dict() for u in found[:max(limit, 0)]], "total": len(found)})

    async def api_upgrade(request: Request) -> Response:
        upgrade = view.upgrades.get(request.path_params["upgrade_id"])
        if upgrade is None:
            return _problem(404, f"no upgrade {request.path_params['upgrade_id']} on upgrade.status")
        return JSONResponse(upgrade.as_dict(history=True))

    async def api_summary(request: Request) -> Response:
        return JSONResponse(summary())

    async def api_preview(request: Request) -> Response:
        body = await request.body()
        if len(body) > PREVIEW_MAX_BYTES:
            return _problem(413, "a request is at most 1 MiB")
        try:
            event = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _problem(400, f"the body is not JSON: {exc}")
        if not isinstance(event, dict):
            return _problem(400, "the body must be one upgrade.requested event (a JSON object)")
        from starlette.concurrency import run_in_threadpool

        result = await run_in_threadpool(preview_request, view, settings, event)
        return JSONResponse(result.as_dict())

    async def healthz(request: Request) -> Response:
        age = time.monotonic() - follower.last_round
        ok = age < STALE_S and follower.error is None
        return JSONResponse({"alive": ok, "seconds_since_read": round(age, 1), "error": follower.error},
                            status_code=200 if ok else 503)

    routes = [Route("/", index), Route("/live", live), Route("/upgrades/{upgrade_id}", upgrade_page),
              Route("/api/upgrades", api_upgrades), Route("/api/upgrades/{upgrade_id}", api_upgrade),
              Route("/api/summary", api_summary), Route("/api/preview", api_preview, methods=["POST"]),
              Route("/healthz", healthz)]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        if follow:
            follower.start()
        try:
            yield
        finally:
            if follow:
                follower.stop()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.view = view
    return app


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def when(moment: str | None) -> str:
    """An RFC 3339 moment as an admin reads it: 2026-12-01 09:30:05 UTC."""
    if not moment:
        return "—"
    try:
        parsed = datetime.fromisoformat(moment.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return moment
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC")


def money(minor: int | None, currency: str | None) -> str:
    if minor is None:
        return "—"
    return f"{minor / 100:,.2f} {currency or ''}".strip()


STYLE = """
:root { --fg:#1b1f24; --muted:#5b6470; --line:#d8dde3; --ok:#1a7f37; --bad:#b42318; --wait:#9a6700; --bar:#0969da; }
* { box-sizing: border-box; }
body { font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0;
       overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
form.filter { margin: .8rem 0 0; display: flex; gap: .4rem; flex-wrap: wrap; }
form.filter input { font: inherit; padding: .2rem .4rem; min-width: 12rem; }
header { padding: .8rem 1rem; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.15rem; margin: 0; }
main { padding: 0 1rem 2rem; max-width: 60rem; margin: 0 auto; }
h2 { font-size: 1.05rem; margin: 1.4rem 0 .5rem; }
.counts, .meta { color: var(--muted); font-size: .9rem; }
.card { border: 1px solid var(--line); border-radius: .5rem; padding: .6rem .8rem; margin: .5rem 0; }
.card .top { display: flex; flex-wrap: wrap; gap: .3rem .8rem; align-items: baseline; }
.card .id { font-weight: 600; word-break: break-all; }
.badge { font-size: .8rem; padding: .05rem .45rem; border-radius: 1rem; border: 1px solid currentColor; }
.completed { color: var(--ok); } .rejected, .failed { color: var(--bad); }
.accepted, .migrating, .credit_check_pending { color: var(--wait); }
progress { width: 100%; height: 1rem; accent-color: var(--bar); }
.reason { margin: .3rem 0 0; padding-left: .6rem; border-left: 3px solid var(--bad); }
.reason .remedy { font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
td, th { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid var(--line); vertical-align: top; }
a { color: var(--bar); }
@media (max-width: 40rem) { body { font-size: 15px; } main { padding: 0 .6rem 2rem; } }
"""

SCRIPT = """
<script>
(function () {
  const live = document.getElementById('live');
  async function refresh() {
    try {
      const response = await fetch('/live' + window.location.search, {cache: 'no-store'});
      if (response.ok) { live.innerHTML = await response.text(); live.dataset.refreshed = Date.now(); }
    } catch (e) { /* the server restarts: try again */ }
  }
  setInterval(refresh, 1000);
})();
</script>
"""


def page(title: str, body: str, live: bool = False, before: str = "") -> str:
    content = before + (f'<div id="live">{body}</div>{SCRIPT}' if live else body)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><style>{STYLE}</style></head><body>'
            f'<header><h1><a href="/">planshift</a> · upgrade status</h1></header><main>{content}</main></body></html>')


def _badge(status: str) -> str:
    return f'<span class="badge {_e(status)}">{_e(status.replace("_", " "))}</span>'


def render_live(view: StatusView, summary: dict[str, Any], tenant: str | None = None) -> str:
    upgrades = view.find(tenant=tenant) if tenant else list(view)
    counts = " · ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(summary["counts"].items())) or "none yet"
    parts = [f'<p class="counts" id="counts">Upgrades: {_e(counts)}</p>']
    if summary.get("reader_error"):
        parts.append(f'<p class="rejected">Not reading upgrade.status right now: {_e(summary["reader_error"])}</p>')
    # the furthest along first: the ones an admin is watching move
    flying = sorted((u for u in upgrades if u.status in IN_FLIGHT),
                    key=lambda u: (-(u.progress or {}).get("users_done", 0), u.status != Status.MIGRATING,
                                   u.requested_at))
    parts.append(f'<h2>In flight ({len(flying)})</h2>')
    parts += [render_in_flight(u) for u in flying] or ['<p class="meta">Nothing in flight.</p>']
    done = sorted((u for u in upgrades if u.status == Status.COMPLETED), key=lambda u: u.updated_at, reverse=True)
    parts.append(f'<h2>Recently completed ({len(done)})</h2>')
    parts += [render_completed(u) for u in done[:RECENT]] or ['<p class="meta">None yet.</p>']
    refused = sorted((u for u in upgrades if u.status in (Status.REJECTED, Status.FAILED)),
                     key=lambda u: u.updated_at, reverse=True)
    parts.append(f'<h2>Rejected or failed ({len(refused)})</h2>')
    parts += [render_rejected(u) for u in refused[:RECENT]] or ['<p class="meta">None.</p>']
    parts.append(render_operations(summary))
    return "".join(parts)


def _head(u: UpgradeView) -> str:
    return (f'<div class="top"><a class="id" href="/upgrades/{_e(u.upgrade_id)}">{_e(u.upgrade_id)}</a>'
            f'<span>{_e(u.tenant_id)}</span>{_badge(u.status)}</div>')


def render_in_flight(u: UpgradeView) -> str:
    lines = [f'<div class="card in-flight" data-upgrade="{_e(u.upgrade_id)}">', _head(u)]
    progress = u.progress
    if u.status == Status.MIGRATING and progress:
        total, done = max(progress.get("users_total", 0), 1), progress.get("users_done", 0)
        lines.append(f'<progress value="{done}" max="{total}" aria-label="users moved"></progress>'
                     f'<div class="meta">{done:,} of {progress.get("users_total", 0):,} users · '
                     f'{progress.get("batches_done", 0)} of {progress.get("batch_count", 0)} batches</div>')
        locked = u.latest.get("admin_locked_until")
        if locked:
            lines.append(f'<div class="meta lock">Admin centre locked until {_e(when(locked))}</div>')
    elif u.status == Status.CREDIT_CHECK_PENDING and u.credit_check:
        check = u.credit_check
        lines.append(f'<div class="meta">Waiting for a credit check ({_e(check.get("reason"))}); the decision is '
                     f'due by {_e(check.get("due_by"))}. Users keep their current plan meanwhile.</div>')
    else:
        lines.append('<div class="meta">Accepted; licence migration starts shortly.</div>')
    lines.append("</div>")
    return "".join(lines)


def render_completed(u: UpgradeView) -> str:
    latest = u.latest
    credit = latest.get("credit_minor")
    text = f"credit {money(credit, latest.get('currency'))}" if credit else "no credit (nothing unused)"
    if latest.get("forfeit_minor"):
        text += f" · prepaid time forfeited {money(latest['forfeit_minor'], latest.get('currency'))}"
    resets = _count(latest.get("service_plan_resets"))
    users = (u.progress or {}).get("users_done")
    return (f'<div class="card done" data-upgrade="{_e(u.upgrade_id)}">{_head(u)}'
            f'<div class="credit">{_e(text)}</div><div class="meta">{_e(users if users is not None else "?")} users '
            f'moved to {_e(latest.get("new_subscription_id"))}'
            + (f' · {resets} had per-service settings reset' if resets else '')
            + f' · completed {_e(when(u.updated_at))}</div></div>')


def _count(value: Any) -> int:
    """`service_plan_resets`: a count (CONTRACT.md §3), or a list of users."""
    return len(value) if isinstance(value, list) else int(value or 0)


def render_reason(reason: dict[str, Any]) -> str:
    retry = f' (retry after {_e(reason["retry_after"])})' if reason.get("retry_after") else ""
    return (f'<div class="reason"><code>{_e(reason.get("code"))}</code> — {_e(reason.get("message"))}'
            f'<div>Remedy: <span class="remedy">{_e(reason.get("remedy"))}</span>{retry}</div></div>')


def render_rejected(u: UpgradeView) -> str:
    reasons = "".join(render_reason(r) for r in u.reasons) or '<div class="meta">No reason given.</div>'
    return f'<div class="card refused" data-upgrade="{_e(u.upgrade_id)}">{_head(u)}{reasons}</div>'


def render_operations(summary: dict[str, Any]) -> str:
    parts = ['<h2>Dead letters</h2>']
    dead = {t: n for t, n in summary["dead_letters"].items() if n}
    parts.append('<p class="meta">' + (" · ".join(f"{n} from {_e(t)}" for t, n in sorted(dead.items()))
                                       or "None.") + "</p>")
    recon = summary.get("reconciliation")
    parts.append('<h2>Last reconciliation</h2>')
    if recon is None:
        parts.append('<p class="meta">Not run yet (planshift reconcile --date D).</p>')
    else:
        rows = "".join(f"<tr><td>{_e(f['check_code'])}</td><td>{_e(f['currency'] or '—')}</td>"
                       f"<td>{f['count']}</td><td>{money(f['delta_minor'], None)}</td></tr>"
                       for f in recon["findings"])
        parts.append(f'<p class="meta">As of {_e(recon["run_date"])}, written {_e(recon["written_at"])}.</p>'
                     + (f'<div class="scroll"><table><tr><th>check</th><th>currency</th><th>findings</th>'
                        f'<th>Δ</th></tr>{rows}</table></div>' if rows else '<p class="meta">No findings.</p>'))
    return "".join(parts)


def render_upgrade(u: UpgradeView) -> str:
    rows = []
    for s in u.history:
        detail = []
        if s.get("progress"):
            p = s["progress"]
            detail.append(f"{p.get('users_done', 0):,}/{p.get('users_total', 0):,} users, "
                          f"{p.get('batches_done', 0)}/{p.get('batch_count', 0)} batches")
        if s.get("credit_check"):
            detail.append(f"credit check {s['credit_check'].get('reason')} due by {s['credit_check'].get('due_by')}")
        if s.get("admin_locked_until"):
            detail.append(f"admin centre locked until {s['admin_locked_until']}")
        if s.get("status") == Status.COMPLETED:
            detail.append(f"credit {money(s.get('credit_minor'), s.get('currency'))}")
        reasons = "".join(render_reason(r) for r in s.get("reasons") or [])
        rows.append(f"<tr><td>{_e(when(s.get('occurred_at')))}</td><td>{_badge(s.get('status', '?'))}</td>"
                    f"<td>{_e('; '.join(detail))}{reasons}</td></tr>")
    current = {Status.COMPLETED: render_completed, Status.REJECTED: render_rejected,
               Status.FAILED: render_rejected}.get(u.status, render_in_flight)(u)
    return (f"{current}<h2>History</h2><div class='scroll'><table><tr><th>when</th><th>status</th>"
            f"<th>detail</th></tr>{''.join(rows)}</table></div><p><a href='/api/upgrades/{_e(u.upgrade_id)}'>as JSON</a> · "
            f"<a href='/'>all upgrades</a></p>")


def serve(settings: Settings, host: str, port: int) -> None:
    run_asgi(create_app(settings), host, port)


def run_asgi(app, host: str, port: int) -> None:
    """Run an ASGI app on uvicorn until SIGINT or SIGTERM, then stop cleanly (exit 0, as
    every planshift process does; uvicorn's own handlers would re-raise the signal)."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            def stop(signum, frame):
                self.should_exit = True

            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)).run()


__all__ = ["create_app", "serve", "run_asgi", "last_reconciliation"]

"""A reference licence service (`planshift directory serve`): a stand-in for a vendor's
licence system, as the billing simulator stands in for billing, with the semantics that
matter to planshift of Microsoft Graph's licence assignment:

- licences are assigned per user, **at most 20 users per call** (a larger call is `400`);
- writes are **throttled per tenant**: at most `quota` calls in any `window` seconds (Graph:
  about 3,000 requests per 150 s per app and tenant); beyond it the call is answered
  **`429 Too Many Requests` with `Retry-After`** (seconds until a call would be let through)
  and changes nothing;
- now and then a call is answered **`503 Service Unavailable`** (`error_rate`), changing nothing;
- every call takes about `latency_ms`.

It serves the directory interface (`LicenceDirectory`) over HTTP from the embedded store
(`SqliteDirectory`), so a move keeps its guarantees: one store transaction per call,
the target licence written before the source goes, idempotent, resets recorded. Reads and
planshift's own records (upgrade ids seen, resets, swept users) are not throttled.
Routes (JSON):

    GET  /v1/tenants/{t}/subscriptions/{s}/holders[?count=true | ?after=U&limit=N]
    POST /v1/holders                      {"pairs": [[tenant, subscription], ...]}
    GET  /v1/tenants/{t}/users/{u}/licences
    POST /v1/licences                     {"licences": [[tenant, user, subscription, sku, "[disabled]"], ...],
                                           "replace": bool}
    GET  /v1/licences                     every licence (for `directory export`)
    GET  /v1/licences/count
    POST /v1/tenants/{t}/licenceMoves     {"upgrade_id", "user_ids" (≤ 20), "source_subscription_id",
                                           "target_subscription_id", "target_sku", "sweep": bool}   (throttled)
    GET  /v1/upgrades/{u}/swept · GET /v1/upgrades/{u}/resets
    POST /v1/upgrades/settling            {"upgrades": [[upgrade, tenant, source subscription], ...]}:
                                          per upgrade [upgrade, anyone still on the source, swept, resets]
    POST /v1/claims                       {"claims": [[upgrade, tenant, event], ...], "now_ms", "own"}
    POST /v1/claims/renew                 {"upgrade_id", "tenant_id", "now_ms"}
    GET  /v1/stats                        calls, throttled, unavailable, per tenant
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from planshift.settings import Quota
from planshift.storage.directory import MigrationRefused, SqliteDirectory, settling_read

CALL_SIZE = 20  # Graph: at most 20 users per licence-assignment batch request


@dataclass
class ServiceStats:
    calls: Counter = field(default_factory=Counter)  # tenant → write calls answered 200
    throttled: Counter = field(default_factory=Counter)  # tenant → 429s
    unavailable: Counter = field(default_factory=Counter)  # tenant → 503s
    users: Counter = field(default_factory=Counter)  # tenant → users moved
    first: dict[str, float] = field(default_factory=dict)  # tenant → first call accepted (monotonic)
    last: dict[str, float] = field(default_factory=dict)
    requests: Counter = field(default_factory=Counter)  # "METHOD /route" → requests answered, any status
    longest_gap: dict[str, float] = field(default_factory=dict)  # tenant → longest time between two accepted calls
    gaps_over_1s: Counter = field(default_factory=Counter)  # tenant → seconds of such gaps beyond the first second

    def as_dict(self) -> dict[str, Any]:
        tenants = set(self.calls) | set(self.throttled) | set(self.unavailable)
        return {"tenants": {t: {"calls": self.calls[t], "throttled": self.throttled[t],
                                "unavailable": self.unavailable[t], "users": self.users[t],
                                "seconds": round(self.last.get(t, 0) - self.first.get(t, 0), 3),
                                "first_at": self.first.get(t), "last_at": self.last.get(t),
                                "longest_gap_s": round(self.longest_gap.get(t, 0.0), 3),
                                "gaps_over_1s": round(self.gaps_over_1s[t], 3)}
                            for t in sorted(tenants)},
                "calls": sum(self.calls.values()), "throttled": sum(self.throttled.values()),
                "unavailable": sum(self.unavailable.values()), "requests": dict(self.requests)}


class Throttle:
    """The per-tenant sliding window."""

    def __init__(self, quota: Quota):
        self.quota = quota
        self._calls: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def admit(self, tenant: str, now: float) -> float:
        """0 if the call may go ahead (and counts it), else the seconds to wait."""
        with self._lock:
            calls = self._calls[tenant]
            while calls and calls[0] <= now - self.quota.window_s:
                calls.popleft()
            if len(calls) >= self.quota.calls:
                return calls[0] + self.quota.window_s - now
            calls.append(now)
            return 0.0


def create_service(store: SqliteDirectory, quota: Quota | None = None, latency_ms: float = 0.0,
                   error_rate: float = 0.0, seed: int = 7) -> Starlette:
    throttle = Throttle(quota or Quota())
    stats = ServiceStats()
    lock = threading.Lock()  # one store connection: its calls one at a time (SQLite writes are anyway)
    chance = random.Random(seed)

    async def call(fn, *args):
        def locked():
            with lock:
                return fn(*args)
        return await run_in_threadpool(locked)

    async def pause() -> None:
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)

    async def holders(request: Request) -> Response:
        t, s = request.path_params["tenant"], request.path_params["subscription"]
        await pause()
        if request.query_params.get("count") == "true":
            return JSONResponse({"count": await call(store.count_holders, t, s)})
        if "limit" in request.query_params:  # a page, in user-id order, after a cursor
            return JSONResponse({"user_ids": await call(store.holders_after, t, s, request.query_params.get("after"),
                                                        int(request.query_params["limit"]))})
        return JSONResponse({"user_ids": await call(store.holders, t, s)})

    async def holders_many(request: Request) -> Response:
        pairs = [tuple(p) for p in (await request.json())["pairs"]]
        found = await call(store.holders_many, pairs)
        await pause()
        return JSONResponse({"holders": [[t, s, users] for (t, s), users in found.items()]})

    async def licences_of(request: Request) -> Response:
        rows = await call(store.licences_of, request.path_params["tenant"], request.path_params["user"])
        return JSONResponse({"licences": [[x.tenant_id, x.user_id, x.subscription_id, x.sku,
                                           list(x.disabled_services)] for x in rows]})

    async def put(request: Request) -> Response:
        """Rows as the store keeps them (disabled services as JSON text), in one transaction;
        `replace`: instead of everything there."""
        body = await request.json()
        rows = [tuple(r) for r in body["licences"]]
        await call(store._write_rows, rows, bool(body.get("replace")))
        return JSONResponse({"written": len(rows)})

    async def everything(request: Request) -> Response:
        rows = await call(lambda: [list(r) for r in store.all()])
        return JSONResponse({"licences": rows})

    async def count(request: Request) -> Response:
        return JSONResponse({"count": await call(store.count)})

    async def moves(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        body = await request.json()
        users = body.get("user_ids") or []
        if len(users) > CALL_SIZE:
            return JSONResponse({"error": {"code": "BadRequest", "message": f"at most {CALL_SIZE} users per call"}},
                                status_code=400)
        await pause()
        wait = throttle.admit(tenant, time.monotonic())
        if wait > 0:
            stats.throttled[tenant] += 1
            return JSONResponse({"error": {"code": "TooManyRequests", "message": "the tenant's quota is used up"}},
                                status_code=429, headers={"Retry-After": str(max(1, round(wait + 0.5)))})
        if error_rate and chance.random() < error_rate:
            stats.unavailable[tenant] += 1
            return JSONResponse({"error": {"code": "ServiceUnavailable", "message": "try again"}}, status_code=503,
                                headers={"Retry-After": "1"})
        args = (tenant, body["upgrade_id"], users, body["source_subscription_id"], body["target_subscription_id"],
                body["target_sku"])
        try:
            result = await call(store.sweep_users if body.get("sweep") else store.migrate, *args)
        except MigrationRefused as exc:
            return JSONResponse({"error": {"code": "Conflict", "message": str(exc)}}, status_code=409)
        now = time.monotonic()
        stats.calls[tenant] += 1
        stats.users[tenant] += result.users_migrated
        stats.first.setdefault(tenant, now)
        if tenant in stats.last:
            gap = now - stats.last[tenant]
            stats.longest_gap[tenant] = max(stats.longest_gap.get(tenant, 0.0), gap)
            stats.gaps_over_1s[tenant] += max(0.0, gap - 1.0)
        stats.last[tenant] = now
        return JSONResponse({"users_migrated": result.users_migrated,
                             "users_already_migrated": result.users_already_migrated,
                             "users_missing": result.users_missing,
                             "resets": [[u, list(d)] for u, d in result.resets]})

    async def swept(request: Request) -> Response:
        return JSONResponse({"count": await call(store.swept, request.path_params["upgrade"])})

    async def resets(request: Request) -> Response:
        rows = await call(store.resets, request.path_params["upgrade"])
        return JSONResponse({"resets": [[t, u, s, k, list(d)] for t, u, s, k, d in rows]})

    async def settling(request: Request) -> Response:
        wanted = [tuple(u) for u in (await request.json())["upgrades"]]

        def read() -> list[list]:
            reads = [(u, settling_read(store, u, t, s)) for u, t, s in wanted]
            return [[u, r.late, r.swept, [[t, user, s, k, list(d)] for t, user, s, k, d in r.resets]] for u, r in reads]
        found = await call(read)
        await pause()
        return JSONResponse({"upgrades": found})

    async def claims(request: Request) -> Response:
        body = await request.json()
        found = await call(store.claim_upgrades, [tuple(c) for c in body["claims"]], body["now_ms"],
                           body.get("own", True))
        return JSONResponse({"claims": [[u, t, c.owner, c.first_event_id, c.last_seen_at]
                                        for (u, t), c in found.items()]})

    async def renew(request: Request) -> Response:
        body = await request.json()
        await call(store.renew_claim, body["upgrade_id"], body["tenant_id"], body["now_ms"])
        return JSONResponse({})

    async def stats_view(request: Request) -> Response:
        return JSONResponse({**stats.as_dict(), "quota": str(throttle.quota), "latency_ms": latency_ms,
                             "error_rate": error_rate})

    routes = [
        Route("/v1/tenants/{tenant}/subscriptions/{subscription}/holders", holders),
        Route("/v1/holders", holders_many, methods=["POST"]),
        Route("/v1/tenants/{tenant}/users/{user}/licences", licences_of),
        Route("/v1/licences", put, methods=["POST"]),
        Route("/v1/licences", everything, methods=["GET"]),
        Route("/v1/licences/count", count),
        Route("/v1/tenants/{tenant}/licenceMoves", moves, methods=["POST"]),
        Route("/v1/upgrades/{upgrade}/swept", swept),
        Route("/v1/upgrades/{upgrade}/resets", resets),
        Route("/v1/upgrades/settling", settling, methods=["POST"]),
        Route("/v1/claims", claims, methods=["POST"]),
        Route("/v1/claims/renew", renew, methods=["POST"]),
        Route("/v1/stats", stats_view),
    ]
    def counted(route: Route) -> Route:
        async def endpoint(request: Request) -> Response:
            stats.requests[f"{request.method} {route.path}"] += 1
            return await route.endpoint(request)
        return Route(route.path, endpoint, methods=route.methods)

    app = Starlette(routes=[r if r.endpoint is stats_view else counted(r) for r in routes])
    app.state.stats = stats
    return app


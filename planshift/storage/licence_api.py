"""The licence directory behind a licence API over HTTP (`PLANSHIFT_DIRECTORY_URL=http://…`),
as planshift meets a vendor's licence system: Microsoft Graph assigns licences per user, at
most 20 users per request, within a write quota per app and tenant, and answers `429` with
`Retry-After` beyond it (and, now and then, `503`).

`LicenceApiDirectory` is the `LicenceDirectory` interface over such an API (the reference
one is `planshift directory serve`, `planshift.storage.licence_service`):

- a batch of `PLANSHIFT_BATCH_SIZE` users becomes calls of at most 20 users, a few in flight
  at once (`concurrency`), in order of the batch;
- each tenant's calls are **paced** by a token bucket at the tenant's quota
  (`PLANSHIFT_LICENCE_API_QUOTA`, `CALLS/SECONDS`; Graph's is about `3000/150`), so the API
  is kept close to its limit without being pushed past it; one bucket per tenant per
  process (one process migrates a tenant's batches at a time: `docs/CONTRACT.md`, refinement 32);
- a `429` is waited out for its `Retry-After` and the call sent again (the bucket is held
  back too, so the tenant's other calls wait with it);
- a `503`, a timeout or a refused connection is retried with exponential back-off, at most
  `attempts` times; then the batch raises `LicenceApiUnavailable`, which the runtime retries
  and, when it keeps failing, dead-letters — the upgrade fails with `MIGRATION_FAILED`
  through the existing failure path, and is re-driven once the API is back.

Every move stays what the directory interface promises (one store transaction per call on
the service's side, target before source, idempotent, resets recorded), so a redone batch
changes nothing.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from planshift.storage.directory import (Claim, DirectoryError, Licence, MigrationRefused, MigrationResult,
                                         SettlingRead, licence_rows)

CALL_SIZE = 20
PACE = 0.97  # of the quota: calls are paced a little under it


class LicenceApiUnavailable(DirectoryError):
    """The licence API kept failing (503, timeouts, refused connections) past the attempts
    allowed: a transient error for the runtime (retried, then dead-lettered)."""


class TokenBucket:
    """`rate` tokens a second, at most `capacity` saved up; `take()` waits for one."""

    def __init__(self, rate: float, capacity: float = 1.0):
        self.rate, self.capacity = rate, capacity
        self._tokens, self._at = capacity, time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Wait for a token; the seconds waited."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
        return wait

    def hold_back(self, seconds: float) -> None:
        """After a 429: no token for `seconds` (the tenant's other calls wait with it)."""
        with self._lock:
            self._tokens = min(self._tokens, -seconds * self.rate)
            self._at = time.monotonic()


@dataclass
class ApiCounters:
    calls: int = 0
    throttled: int = 0  # 429s received
    unavailable: int = 0  # 503s, timeouts, refused connections
    waited_s: float = 0.0  # pacing and Retry-After
    per_tenant: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class LicenceApiDirectory:
    concurrent = True  # safe to call from several threads at once (a connection per thread)

    def __init__(self, url: str, *, quota_per_s: float | None = 20.0, burst: float = 1.0, concurrency: int = 4,
                 attempts: int = 6, timeout_s: float = 30.0, backoff_s: float = 0.2):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise DirectoryError(f"{url!r} is not a licence API URL (http://host:port)")
        self.url = url.rstrip("/")
        self._https = parsed.scheme == "https"
        self._host, self._port = parsed.hostname, parsed.port or (443 if self._https else 80)
        self._base = parsed.path.rstrip("/")
        self.quota_per_s, self.attempts, self.timeout_s, self.backoff_s = quota_per_s, attempts, timeout_s, backoff_s
        self.burst = burst
        self.counters = ApiCounters()
        self._buckets: dict[str, TokenBucket] = {}
        self._buckets_lock = threading.Lock()
        self._local = threading.local()
        self.concurrency = max(1, concurrency)
        # Calls in flight, of every batch this process runs (several tenants' side by side).
        # Each batch paces its own calls in its own thread and keeps `concurrency` in flight,
        # so a tenant waiting for its quota never holds a thread another tenant's call needs.
        self._pool = ThreadPoolExecutor(max_workers=16 * self.concurrency, thread_name_prefix="licence-api")

    @classmethod
    def for_settings(cls, settings) -> "LicenceApiDirectory":
        from planshift.settings import Quota

        quota = Quota.parse(settings.licence_api_quota) if settings.licence_api_quota else None
        # a little under the quota: the service counts a sliding window, the bucket a steady rate
        # A bucket that can save up the quota's last few per cent: a thread that wakes late on a
        # busy machine catches up instead of losing the time, and any window still holds no
        # more than the quota.
        return cls(settings.directory_url, quota_per_s=quota.per_second * PACE if quota else None,
                   burst=max(1.0, (1 - PACE) * quota.calls) if quota else 1.0,
                   concurrency=settings.licence_api_concurrency)

    def __str__(self) -> str:
        return f"licence API at {self.url}"

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # -- HTTP ----------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = self._local.connection = kind(self._host, self._port, timeout=self.timeout_s)
        return connection

    def _send(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        connection = self._connection()
        try:
            connection.request(method, self._base + path, body=data,
                               headers={"Content-Type": "application/json"} if data else {})
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self._local.connection = None
            raise
        return response.status, dict(response.getheaders()), json.loads(payload) if payload else None

    def _request(self, method: str, path: str, body: Any = None, tenant: str | None = None,
                 paced: bool = False) -> Any:
        """One call, with 429s waited out and 503s retried. `paced`: the caller took the
        tenant's token for its first try already (`_calls`)."""
        failures = 0
        first = True
        while True:
            if tenant is not None and self.quota_per_s and not (paced and first):
                self.counters.waited_s += self._bucket(tenant).take()
            first = False
            try:
                status, headers, payload = self._send(method, path, body)
            except (OSError, http.client.HTTPException) as exc:
                status, headers, payload = 0, {}, {"error": {"message": f"{type(exc).__name__}: {exc}"}}
            self.counters.calls += 1
            if status == 200:
                if tenant is not None:
                    self.counters.per_tenant[tenant] += 1
                return payload
            if status == 429:
                self.counters.throttled += 1
                wait = _retry_after(headers, 1.0)
                if tenant is not None and self.quota_per_s:
                    self._bucket(tenant).hold_back(wait)  # the tenant's other calls wait too; this one
                else:                                     # takes a token again, after the wait
                    time.sleep(wait)
                self.counters.waited_s += wait
                continue  # a throttled call changed nothing and counts against no attempt
            message = (payload or {}).get("error", {}).get("message", "") if isinstance(payload, dict) else ""
            if status == 409:
                raise MigrationRefused(message)
            if status in (0, 500, 502, 503, 504):
                self.counters.unavailable += 1
                failures += 1
                if failures >= self.attempts:
                    raise LicenceApiUnavailable(f"the licence API at {self.url} did not answer {method} {path} "
                                                f"after {failures} attempts: {status or 'no answer'} {message}")
                time.sleep(max(_retry_after(headers, 0.0), self.backoff_s * 2 ** (failures - 1)))
                continue
            raise DirectoryError(f"the licence API at {self.url} answered {status} to {method} {path}: {message}")

    def _bucket(self, tenant: str) -> TokenBucket:
        with self._buckets_lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = TokenBucket(self.quota_per_s, self.burst)
            return bucket

    # -- reads ---------------------------------------------------------------------

    def count_holders(self, tenant_id: str, subscription_id: str) -> int:
        return self._request("GET", f"/v1/tenants/{_q(tenant_id)}/subscriptions/{_q(subscription_id)}/holders"
                                    f"?count=true")["count"]

    def holders(self, tenant_id: str, subscription_id: str) -> list[str]:
        return self._request("GET", f"/v1/tenants/{_q(tenant_id)}/subscriptions/{_q(subscription_id)}/holders"
                             )["user_ids"]

    def holders_after(self, tenant_id: str, subscription_id: str, after: str | None, limit: int) -> list[str]:
        query = urllib.parse.urlencode({"limit": limit, **({"after": after} if after else {})})
        return self._request("GET", f"/v1/tenants/{_q(tenant_id)}/subscriptions/{_q(subscription_id)}/holders"
                                    f"?{query}")["user_ids"]

    def holders_many(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        wanted = list(dict.fromkeys(pairs))
        if not wanted:
            return {}
        found = self._request("POST", "/v1/holders", {"pairs": [list(p) for p in wanted]})["holders"]
        return {(t, s): users for t, s, users in found}

    def licences_of(self, tenant_id: str, user_id: str) -> list[Licence]:
        rows = self._request("GET", f"/v1/tenants/{_q(tenant_id)}/users/{_q(user_id)}/licences")["licences"]
        return [Licence(t, u, s, k, tuple(d)) for t, u, s, k, d in rows]

    def count(self) -> int:
        return self._request("GET", "/v1/licences/count")["count"]

    def all(self) -> Iterable[tuple]:
        """Every licence as the embedded store's rows (disabled services as JSON text)."""
        return [tuple(row) for row in self._request("GET", "/v1/licences")["licences"]]

    def resets(self, upgrade_id: str) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
        rows = self._request("GET", f"/v1/upgrades/{_q(upgrade_id)}/resets")["resets"]
        return [(t, u, s, k, tuple(d)) for t, u, s, k, d in rows]

    def swept(self, upgrade_id: str) -> int:
        return self._request("GET", f"/v1/upgrades/{_q(upgrade_id)}/swept")["count"]

    def settling_reads(self, upgrades: Iterable[tuple[str, str, str]]) -> dict[str, SettlingRead]:
        """For each (upgrade_id, tenant_id, source_subscription_id), in one round trip: whether
        anyone still holds the source licence, the users swept before and the resets recorded
        — what settling an upgrade reads (`consumers/settle.py`), for a whole poll at once."""
        wanted = list(dict.fromkeys(upgrades))
        if not wanted:
            return {}
        found = self._request("POST", "/v1/upgrades/settling", {"upgrades": [list(u) for u in wanted]})["upgrades"]
        return {u: SettlingRead(bool(late), swept, [(t, user, s, k, tuple(d)) for t, user, s, k, d in resets])
                for u, late, swept, resets in found}

    # -- writes --------------------------------------------------------------------

    def put(self, licences: Iterable[Licence], replace_all: bool = False) -> int:
        rows = licence_rows(licences)
        self._write_rows(rows, replace_all)
        return len(rows)

    def _write_rows(self, rows: Sequence[tuple], replace_all: bool) -> None:
        """In one call, so in one transaction of the service's store (`directory import`)."""
        self._request("POST", "/v1/licences", {"licences": [list(r) for r in rows], "replace": replace_all})

    def migrate(self, tenant_id: str, upgrade_id: str, user_ids: Sequence[str], source_subscription_id: str,
                target_subscription_id: str, target_sku: str) -> MigrationResult:
        """The batch as calls of at most 20 users, a few in flight at once, paced at the
        tenant's quota. If one call fails for good, the batch raises (the calls done are
        kept: the redo finds those users already migrated)."""
        users = list(dict.fromkeys(user_ids))
        calls = [users[i:i + CALL_SIZE] for i in range(0, len(users), CALL_SIZE)] or [[]]
        body = {"upgrade_id": upgrade_id, "source_subscription_id": source_subscription_id,
                "target_subscription_id": target_subscription_id, "target_sku": target_sku}
        return _sum(self._calls(tenant_id, body, calls))

    def _calls(self, tenant_id: str, body: dict[str, Any], chunks: list[list[str]]) -> list[dict[str, Any]]:
        """The moves of `chunks`, paced here, in the caller's thread, at the tenant's quota,
        `concurrency` in flight at once."""
        path = f"/v1/tenants/{_q(tenant_id)}/licenceMoves"
        bucket = self._bucket(tenant_id) if self.quota_per_s else None
        room = threading.Semaphore(self.concurrency)
        futures = []
        try:
            for chunk in chunks:
                room.acquire()
                if bucket is not None:
                    self.counters.waited_s += bucket.take()
                future = self._pool.submit(self._request, "POST", path, {**body, "user_ids": chunk}, tenant_id, True)
                future.add_done_callback(lambda _: room.release())
                futures.append(future)
        finally:
            results = [f.result() for f in futures]  # raises the first call's error that failed for good
        return results

    def sweep(self, tenant_id: str, upgrade_id: str, source_subscription_id: str, target_subscription_id: str,
              target_sku: str) -> MigrationResult:
        """Every user still holding a source licence, 20 a call, until none does."""
        body = {"upgrade_id": upgrade_id, "source_subscription_id": source_subscription_id,
                "target_subscription_id": target_subscription_id, "target_sku": target_sku, "sweep": True}
        results = []
        for _ in range(100):  # users keep arriving: give up after 100 rounds (the next completion sweeps again)
            left = self.holders(tenant_id, source_subscription_id)
            if not left:
                break
            results += self._calls(tenant_id, body, [left[i:i + CALL_SIZE] for i in range(0, len(left), CALL_SIZE)])
        return _sum(results)

    def claim_upgrades(self, claims: Iterable[tuple[str, str, str]], now_ms: int,
                       own: bool = True) -> dict[tuple[str, str], Claim]:
        wanted = [list(c) for c in claims]
        if not wanted:
            return {}
        found = self._request("POST", "/v1/claims", {"claims": wanted, "now_ms": now_ms, "own": own})["claims"]
        return {(u, t): Claim(owner, first, seen) for u, t, owner, first, seen in found}

    def renew_claim(self, upgrade_id: str, tenant_id: str, now_ms: int) -> None:
        self._request("POST", "/v1/claims/renew", {"upgrade_id": upgrade_id, "tenant_id": tenant_id, "now_ms": now_ms})


def _sum(results: list[dict[str, Any]]) -> MigrationResult:
    return MigrationResult(sum(r["users_migrated"] for r in results),
                           sum(r["users_already_migrated"] for r in results),
                           sum(r["users_missing"] for r in results),
                           sorted((u, tuple(d)) for r in results for u, d in r["resets"]))


def _retry_after(headers: dict[str, str], default: float) -> float:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")

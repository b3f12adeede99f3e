"""The licence-API directory against the reference licence service, with a vendor's limits:
at most 20 users per call, a per-tenant quota answered with 429 + Retry-After beyond it,
503s now and then, and a service that is down. (Every directory rule — target before
source, idempotent, resets, late users, claims — runs against it too: the `licence-api`
parameter of `directory_url` in tests/test_directory.py and tests/test_lifecycle_rules.py.)"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from planshift.settings import Quota, Settings
from planshift.storage.directory import Licence, SqliteDirectory
from planshift.storage.licence_api import LicenceApiDirectory, LicenceApiUnavailable
from tests.conftest import free_port, licence_service

SOURCE, TARGET = "contoso-sub-std", "contoso-sub-prem-ord-1"


def seeded(tmp_path, users: int) -> tuple:
    path = tmp_path / "api.sqlite3"
    store = SqliteDirectory(path)
    store.put(Licence("contoso", f"u{i:04d}", SOURCE, "M365_BUSINESS_STANDARD", ("TEAMS",) if i % 5 == 0 else ())
              for i in range(users))
    store.close()
    return path, [f"u{i:04d}" for i in range(users)]


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/stats", timeout=10) as response:
        return json.loads(response.read())


def test_past_the_quota_a_429_is_waited_out_for_its_retry_after_and_nothing_is_lost(tmp_path):
    path, users = seeded(tmp_path, 300)
    with licence_service(path, Quota(5, 1.0)) as url:
        api = LicenceApiDirectory(url, quota_per_s=None, concurrency=4)  # not paced: it meets the limit
        began = time.monotonic()
        result = api.migrate("contoso", "ord-1", users, SOURCE, TARGET, "M365_BUSINESS_PREMIUM")
        seconds = time.monotonic() - began
        assert result.users_migrated == 300 and result.users_missing == 0
        assert len(result.resets) == 60
        assert api.counters.throttled > 0 and stats(url)["throttled"] == api.counters.throttled
        assert seconds >= 2.0, "15 calls at 5 a second cannot take less than two seconds"
        assert api.count_holders("contoso", SOURCE) == 0 and api.count_holders("contoso", TARGET) == 300
        again = api.migrate("contoso", "ord-1", users, SOURCE, TARGET, "M365_BUSINESS_PREMIUM")
        assert (again.users_migrated, again.users_already_migrated) == (0, 300)  # idempotent


def test_paced_at_the_quota_the_calls_are_never_throttled_and_run_close_to_it(tmp_path):
    path, users = seeded(tmp_path, 900)
    # 30 calls in any 3 s; paced at 9 a second, any 3 s holds at most 28 of them, whatever
    # the jitter of a loaded machine
    with licence_service(path, Quota(30, 3.0), latency_ms=5) as url:
        api = LicenceApiDirectory(url, quota_per_s=9.0, concurrency=4)
        began = time.monotonic()
        result = api.migrate("contoso", "ord-1", users, SOURCE, TARGET, "M365_BUSINESS_PREMIUM")
        seconds = time.monotonic() - began
    assert result.users_migrated == 900
    assert api.counters.throttled == 0
    # 45 calls: the first at once, then one every 1/9 s
    assert 4.8 <= seconds <= 12.0, seconds


def test_503s_are_retried_and_a_service_that_stays_down_fails_the_batch(tmp_path):
    path, users = seeded(tmp_path, 200)
    with licence_service(path, Quota(10_000, 1.0), error_rate=0.3) as url:
        api = LicenceApiDirectory(url, quota_per_s=None, attempts=12, backoff_s=0.01)
        result = api.migrate("contoso", "ord-1", users, SOURCE, TARGET, "M365_BUSINESS_PREMIUM")
        assert result.users_migrated == 200
        assert api.counters.unavailable > 0 and stats(url)["unavailable"] == api.counters.unavailable
    down = LicenceApiDirectory(f"http://127.0.0.1:{free_port()}", quota_per_s=None, attempts=3, backoff_s=0.01)
    with pytest.raises(LicenceApiUnavailable, match="after 3 attempts"):
        down.migrate("contoso", "ord-2", ["u1"], SOURCE, TARGET, "M365_BUSINESS_PREMIUM")


def test_a_call_of_more_than_20_users_is_refused_by_the_service(tmp_path):
    path, users = seeded(tmp_path, 25)
    with licence_service(path, Quota(100, 1.0)) as url:
        request = urllib.request.Request(url + "/v1/tenants/contoso/licenceMoves", method="POST", data=json.dumps(
            {"upgrade_id": "ord-1", "user_ids": users, "source_subscription_id": SOURCE,
             "target_subscription_id": TARGET, "target_sku": "M365_BUSINESS_PREMIUM"}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
        assert LicenceApiDirectory(url).count_holders("contoso", SOURCE) == 25


def test_settling_reads_answer_a_polls_upgrades_in_one_call_as_the_single_reads_do(tmp_path):
    path, users = seeded(tmp_path, 30)
    with licence_service(path, Quota(1000, 1.0)) as url:
        api = LicenceApiDirectory(url, quota_per_s=None)
        api.migrate("contoso", "ord-1", users[:20], SOURCE, TARGET, "M365_BUSINESS_PREMIUM")
        assert api.settling_reads([("ord-1", "contoso", SOURCE)])["ord-1"].late  # ten still on the source
        api.migrate("contoso", "ord-1", users[20:], SOURCE, TARGET, "M365_BUSINESS_PREMIUM")
        api.put([Licence("contoso", "late-joiner", SOURCE, "M365_BUSINESS_STANDARD", ("EXCHANGE",))])
        api.sweep("contoso", "ord-1", SOURCE, TARGET, "M365_BUSINESS_PREMIUM")
        before = stats(url)
        read = api.settling_reads([("ord-1", "contoso", SOURCE), ("ord-none", "fabrikam", "fabrikam-sub")])
        assert sum(stats(url)["requests"].values()) - sum(before["requests"].values()) == 1
        assert read["ord-1"] == (False, api.swept("ord-1"), api.resets("ord-1"))
        assert read["ord-1"].swept == 1 and len(read["ord-1"].resets) == 6 + 1  # every fifth user, and the late one
        assert read["ord-none"] == (False, 0, [])


def test_the_settings_choose_the_licence_api_and_its_pace():
    from planshift.settings import SettingsError
    from planshift.storage.directory import open_directory

    settings = Settings.from_env({"PLANSHIFT_DIRECTORY_URL": "http://127.0.0.1:8090",
                                  "PLANSHIFT_LICENCE_API_QUOTA": "3000/150"})
    directory = open_directory(settings)
    assert isinstance(directory, LicenceApiDirectory) and directory.quota_per_s == pytest.approx(19.4)
    assert directory.burst == pytest.approx(90)  # the 3% left of 3,000 calls a window
    with pytest.raises(SettingsError, match="PLANSHIFT_LICENCE_API_QUOTA"):
        Settings.from_env({"PLANSHIFT_LICENCE_API_QUOTA": "fast"})
    with pytest.raises(SettingsError, match="PLANSHIFT_DIRECTORY_URL"):
        Settings.from_env({"PLANSHIFT_DIRECTORY_URL": "ftp://somewhere"})


@pytest.mark.broker
def test_an_upgrade_completes_over_a_throttled_licence_api_with_one_switch_and_one_credit(settings, tmp_path):
    from consumers import intake, migrate, settle
    from planshift.contract import Topic
    from planshift.events import with_envelope
    from producers.samples import upgrade_request
    from tests.conftest import produce, running, values, wait_for

    path = tmp_path / "vendor.sqlite3"
    store = SqliteDirectory(path)
    store.put(Licence("contoso", f"user{i}@contoso.example", "contoso-sub-m365_business_standard",
                      "M365_BUSINESS_STANDARD") for i in range(400))
    store.close()
    # 5 calls a second over a 4 s window, as a vendor's quota averages (a 1 s window would make
    # a loaded machine's timing jitter, not the pacing, decide whether a 429 comes)
    with licence_service(path, Quota(20, 4.0), latency_ms=10, error_rate=0.05) as url:
        api = settings.with_(directory_url=url, licence_api_quota="20/4", batch_size=100)
        request = with_envelope(upgrade_request("contoso", "ord-api-1", licenses=400), Topic.UPGRADE_REQUESTED)
        with running(intake.processor(api)), running(migrate.processor(api)), running(settle.processor(api)):
            produce(api, Topic.UPGRADE_REQUESTED, [("contoso", request)])
            wait_for(lambda: any(v["status"] == "completed" for v in values(api, Topic.UPGRADE_STATUS)), 90,
                     interval=0.5, message="the upgrade to complete over the licence API")
        served = stats(url)
    assert len(values(api, Topic.BILLING_SWITCH)) == 1 and len(values(api, Topic.CREDIT_ISSUED)) == 1
    # Under the quota the upgrade is a chain: intake released batch 0, whose worker released batch 1.
    batches = sorted(values(api, Topic.LICENSE_BATCHES), key=lambda b: b["batch_no"])
    # (a second of the quota each: 5 calls of 20 users)
    assert [(b["batch_no"], b["batch_count"], len(b["user_ids"])) for b in batches] == [(n, 4, 100) for n in range(4)]
    assert all(b["chain"]["after"] == max(b["user_ids"]) > max(a["user_ids"]) for a, b in zip(batches, batches[1:]))
    # each batch named the users of the batches after it (`chain.next`, up to three), which the
    # worker moved ahead of their records
    assert all(a["chain"]["next"] == [b["user_ids"] for b in batches[a["batch_no"] + 1:a["batch_no"] + 4]]
               for a in batches[:-1])
    assert "next" not in batches[-1]["chain"]
    assert sorted(u for b in batches for u in b["user_ids"]) == sorted(f"user{i}@contoso.example" for i in range(400))
    assert served["tenants"]["contoso"]["users"] == 400
    assert served["throttled"] == 0, "paced at the quota, the service never had to say 429"
    assert served["tenants"]["contoso"]["calls"] == 20  # 400 users, 20 a call: moving ahead moved each once

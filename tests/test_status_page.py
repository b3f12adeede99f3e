"""The admins' status page (`planshift serve`), in a real headless browser (Debian's chromium,
driven by selenium through chromedriver), against a real broker and the real pipeline:
intake, a migration worker over a licence API that takes its time per call, settlement.

- an upgrade's progress bar moves, the admin lock is shown, then it shows completed with its credit;
- a rejection shows each reason's message and remedy;
- the page fits a phone's width;
- the JSON API, and `POST /api/preview` answering what `planshift preview` answers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request

import pytest

from consumers import intake, migrate, settle
from planshift.contract import Topic
from planshift.ops.broker import free_port
from planshift.events import with_envelope
from planshift.ops.view import StatusView
from planshift.storage.directory import SqliteDirectory
from planshift.web.app import create_app, money
from producers.samples import upgrade_request
from tests.conftest import asgi_server, produce, running, seed_users, spawn, wait_for

pytestmark = pytest.mark.broker

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class LicenceApiPace:
    """The licence directory behind an API that takes a while per batch, as a vendor's
    licence service does (Graph assigns at most 20 users per call): slow enough that the
    page sees the migration under way."""

    def __init__(self, directory, seconds_per_batch: float):
        self.directory, self.pause = directory, seconds_per_batch

    def migrate(self, *args, **kwargs):
        time.sleep(self.pause)
        return self.directory.migrate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.directory, name)


@contextlib.contextmanager
def serving(settings):
    """The status page on uvicorn in a thread, as `planshift serve` runs it."""
    with asgi_server(create_app(settings, StatusView(settings)), "the status page") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Debian's chromium and chromium-driver are needed (./dev.sh setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,1400"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def get_json(url: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def js(driver, script: str):
    return driver.execute_script(script)


def test_an_upgrade_moves_on_the_page_and_then_shows_completed_with_its_credit(settings, browser, tmp_path):
    settings = settings.with_(batch_size=50)
    users = seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 600)
    request = with_envelope(upgrade_request("contoso", "ord-page-1", licenses=len(users)), Topic.UPGRADE_REQUESTED)
    paced = LicenceApiPace(SqliteDirectory.for_settings(settings), 0.4)
    with serving(settings) as url, running(intake.processor(settings)), running(settle.processor(settings)), \
            running(migrate.processor(settings, directory=paced)):
        browser.get(url + "/")
        assert "upgrade status" in browser.title
        produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request)])
        card = "document.querySelector('.in-flight[data-upgrade=\"ord-page-1\"] progress')"
        first = wait_for(lambda: js(browser, f"const p = {card}; return p && p.value > 0 && p.value < p.max "
                                             f"? p.value : null"), 60, message="the progress bar to show progress")
        moved = wait_for(lambda: js(browser, f"const p = {card}; return p && p.value > {first} ? p.value : null"),
                         60, message="the progress bar to move")
        assert moved > first
        lock = js(browser, "const l = document.querySelector('.in-flight[data-upgrade=\"ord-page-1\"] .lock');"
                           "return l && l.textContent")
        assert lock and lock.startswith("Admin centre locked until 20")
        browser.save_screenshot(str(tmp_path / "in-flight.png"))
        credit = wait_for(lambda: js(browser, "const c = document.querySelector("
                                              "'.done[data-upgrade=\"ord-page-1\"] .credit'); return c && c.textContent"),
                          90, message="the upgrade to show completed")
    completed = next(v for v in _statuses(settings, "ord-page-1") if v["status"] == "completed")
    assert credit == f"credit {money(completed['credit_minor'], completed['currency'])}"
    assert completed["credit_minor"] > 0
    assert js(browser, "return document.querySelector('.in-flight[data-upgrade=\"ord-page-1\"]')") is None


def test_a_rejection_shows_each_reason_with_its_remedy_and_the_page_fits_a_phone(settings, browser):
    seed_users(settings, "fabrikam", "fabrikam-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 10)
    request = with_envelope(upgrade_request("fabrikam", "ord-page-2", licenses=10, add_ons=["AUDIO_CONFERENCING"],
                                            unpaid_balance_minor=1200), Topic.UPGRADE_REQUESTED)
    with serving(settings) as url, running(intake.processor(settings)):
        produce(settings, Topic.UPGRADE_REQUESTED, [("fabrikam", request)])
        wait_for(lambda: any(s["status"] == "rejected" for s in _statuses(settings, "ord-page-2")), 30,
                 message="the rejection")
        browser.set_window_size(390, 844)  # a phone
        browser.get(url + "/?tenant=fabrikam")
        reasons = wait_for(lambda: js(browser, "return [...document.querySelectorAll("
                                               "'.refused[data-upgrade=\"ord-page-2\"] .reason')].map(r => "
                                               "[r.querySelector('code').textContent, "
                                               "r.querySelector('.remedy').textContent, r.textContent])") or None,
                           30, message="the rejection on the page")
        assert [(code, remedy) for code, remedy, _ in reasons] == [("HAS_ADD_ON", "REMOVE_ADD_ON"),
                                                                   ("UNPAID_BALANCE", "PAY_BALANCE")]
        assert all(len(text) > 40 for _, _, text in reasons)  # the article's message is there too
        assert js(browser, "return document.documentElement.scrollWidth") <= js(browser, "return window.innerWidth")
        browser.get(url + "/upgrades/ord-page-2")
        assert "REMOVE_ADD_ON" in browser.page_source and "History" in browser.page_source
    browser.set_window_size(1100, 1400)


def test_the_json_api_and_the_preview_answer_what_the_cli_answers(settings, tmp_path):
    seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 12)
    first = with_envelope(upgrade_request("contoso", "ord-api-1", licenses=12), Topic.UPGRADE_REQUESTED)
    with serving(settings) as url, running(intake.processor(settings)):
        produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", first)])
        wait_for(lambda: get_json(url + "/api/upgrades?tenant=contoso")[1]["total"] == 1, 30,
                 message="the upgrade on the API")
        status, listed = get_json(url + "/api/upgrades?tenant=contoso&status=migrating")
        assert status == 200 and [u["upgrade_id"] for u in listed["upgrades"]] == ["ord-api-1"]
        assert listed["upgrades"][0]["progress"]["users_total"] == 12
        assert get_json(url + "/api/upgrades?tenant=nobody")[1] == {"upgrades": [], "total": 0}
        assert get_json(url + "/api/upgrades?status=sleeping")[0] == 400
        status, one = get_json(url + "/api/upgrades/ord-api-1")
        assert status == 200 and [h["status"] for h in one["history"]] == ["accepted", "migrating"]
        assert get_json(url + "/api/upgrades/ord-nope")[0] == 404

        # a second upgrade while the first is in flight: the preview says what intake would
        second = with_envelope(upgrade_request("contoso", "ord-api-2", licenses=12), Topic.UPGRADE_REQUESTED)
        status, answer = get_json(url + "/api/preview", json.dumps(second).encode())
        assert status == 200
        assert answer["verdict"] == "rejected"
        assert [r["code"] for r in answer["reasons"]] == ["CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING"]
        (tmp_path / "second.json").write_text(json.dumps(second))
        log = tmp_path / "preview.log"
        cli = spawn(settings, log, "preview", str(tmp_path / "second.json"), "--json")
        assert cli.wait(60) == 0
        assert json.loads(log.read_text().strip().splitlines()[-1]) == answer
        assert get_json(url + "/api/preview", b"not json")[0] == 400
        assert get_json(url + "/api/preview", b"[1, 2]")[0] == 400
        status, invalid = get_json(url + "/api/preview", json.dumps({"tenant_id": "contoso"}).encode())
        assert status == 200 and invalid["verdict"] == "rejected" and invalid["reasons"][0]["code"] == "INVALID_REQUEST"
        status, health = get_json(url + "/healthz")
        assert status == 200 and health["alive"]
    assert not [s for s in _statuses(settings, "ord-api-2")], "a preview sent nothing"


def test_planshift_serve_serves_the_page_on_its_port(settings, tmp_path):
    port = free_port()
    process = spawn(settings, tmp_path / "serve.log", "serve", "--port", str(port))
    try:
        def answered():
            try:
                return get_json(f"http://127.0.0.1:{port}/api/summary")
            except (urllib.error.URLError, ConnectionError):
                return None
        status, summary = wait_for(answered, 60, message="planshift serve to answer")
        assert status == 200 and summary["counts"] == {} and summary["reconciliation"] is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            body = page.read().decode()
        assert "Nothing in flight." in body and 'name="viewport"' in body
    finally:
        process.terminate()
        assert process.wait(30) == 0, (tmp_path / "serve.log").read_text()


def _statuses(settings, upgrade_id: str) -> list[dict]:
    from planshift.kafka.reader import iter_topic

    return [r.value for r in iter_topic(settings, settings.topic(Topic.UPGRADE_STATUS))
            if r.value.get("upgrade_id") == upgrade_id]


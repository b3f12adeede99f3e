"""Take the status page's screenshots for the docs (docs/images/), from a real demo day.

    .venv/bin/python docs/screenshots.py

Runs `planshift demo` (the full day) with a data folder of its own and a broker on a free
port, serves the page beside it, and photographs it in headless chromium while the
200,000-user tenant migrates (desktop and phone widths), then one upgrade's history.
Not part of the tests (it takes a minute); the tests drive the same page in the same browser.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    data = Path(tempfile.mkdtemp(prefix="planshift-screens-"))
    env = {**os.environ, "PLANSHIFT_DATA_DIR": str(data), "PLANSHIFT_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    planshift = [sys.executable, "-m", "cli"]
    demo = subprocess.Popen([*planshift, "demo"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    page_port = free_port()
    serve = None
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1500"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if serve is None and (data / "kafka").exists():
                time.sleep(8)  # the demo's broker and topics
                serve = subprocess.Popen([*planshift, "serve", "--port", str(page_port)], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{page_port}/api/upgrades?status=migrating",
                                            timeout=5) as response:
                    migrating = json.loads(response.read())["upgrades"]
            except OSError:
                time.sleep(1)
                continue
            large = [u for u in migrating if u["tenant_id"] == "contoso-global" and u["progress"]["users_done"]]
            if large and len(migrating) > 3:
                break
            time.sleep(0.5)
        driver.get(f"http://127.0.0.1:{page_port}/")
        time.sleep(1.5)
        driver.save_screenshot(str(OUT / "status-page.png"))
        driver.set_window_size(390, 844)
        driver.save_screenshot(str(OUT / "status-page-phone.png"))
        demo.wait(300)
        driver.set_window_size(1100, 900)
        driver.get(f"http://127.0.0.1:{page_port}/upgrades/ord-{time.strftime('%Y%m%d', time.gmtime())}-0001")
        driver.save_screenshot(str(OUT / "status-page-upgrade.png"))
    finally:
        driver.quit()
        for process in (serve, demo):
            if process and process.poll() is None:
                process.terminate()
                process.wait(60)
        subprocess.run([*planshift, "broker", "stop"], env=env, stdout=subprocess.DEVNULL)
    print(f"written: {', '.join(p.name for p in sorted(OUT.glob('status-page*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prometheus' own programs on this host, for tests and trying the monitoring out: a
throw-away Pushgateway (`LocalPushgateway`) and `promtool`, from Debian's `prometheus`
and `prometheus-pushgateway` packages (./dev.sh installs them)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from planshift.errors import OperationError
from planshift.ops.broker import free_port


def program(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise OperationError(f"{name} is not installed (Debian: apt-get install {package})")
    return found


class LocalPushgateway:
    """A Pushgateway on 127.0.0.1 at a free port, its data in a folder of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="planshift-pushgateway-"))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "LocalPushgateway":
        binary = program("prometheus-pushgateway", "prometheus-pushgateway")
        log = open(self.folder / "pushgateway.log", "wb")
        self.process = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{self.port}",
                                         f"--persistence.file={self.folder / 'data'}"], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OperationError(f"the Pushgateway exited: {(self.folder / 'pushgateway.log').read_text()[-500:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise OperationError(f"the Pushgateway did not get ready within {timeout:.0f}s")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)

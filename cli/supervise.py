"""Running consumers as supervised child processes (`run all`, `run migrate --instances N`).

Each child is `python -m cli run <consumer> --instance <id>`, with the same
environment. A child that dies is restarted after a short back-off (doubling up to
30 s, reset once it has stayed up a minute). SIGTERM or Ctrl-C is passed on to every
child, which drains and commits, and the supervisor waits for them all.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from planshift.logs import get_logger

log = get_logger(__name__)

STABLE_AFTER_S = 60.0
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff: float = 1.0
    restarts: int = 0
    due_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "cli", *self.argv])
        self.started_at = time.monotonic()
        log.info("child started", child=self.name, pid=self.process.pid)


def supervise(children: list[Child], poll_s: float = 0.5) -> int:
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            child.start()
        while not stopping:
            now = time.monotonic()
            for child in children:
                code = child.process.poll() if child.process is not None else None
                if child.process is not None and code is not None:
                    if now - child.started_at > STABLE_AFTER_S:
                        child.backoff = 1.0
                    log.error("child exited; restarting", child=child.name, exit_code=code,
                              restart_in_s=child.backoff)
                    child.process, child.due_at = None, now + child.backoff
                    child.backoff = min(child.backoff * 2, MAX_BACKOFF_S)
                if child.process is None and now >= child.due_at and not stopping:
                    child.restarts += 1
                    child.start()
            time.sleep(poll_s)
        deadline = time.monotonic() + 60
        for child in children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("child did not stop in time; killing it", child=child.name)
                child.process.kill()
                child.process.wait()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

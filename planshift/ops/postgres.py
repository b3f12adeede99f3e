"""A throw-away PostgreSQL server on this host, for tests, benchmarks and trying the
shared licence directory out (`LocalPostgres`), from Debian's `postgresql` package.

`initdb` makes a cluster in a folder of its own, `pg_ctl` starts it on 127.0.0.1 at a
free port with local trust authentication (nothing outside this host can connect), and
`stop` ends it. PostgreSQL refuses to run as root; run as root, the cluster belongs to
the `postgres` system user that Debian's package creates, and is run as it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from planshift.errors import OperationError
from planshift.ops.broker import free_port

DATABASE = "planshift"


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    raise OperationError("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)")


class LocalPostgres:
    """`durable=False` (tests): the server skips what only a crash of its machine needs
    (fsync, full-page writes) and flushes commits lazily, as a throw-away cluster may.
    `durable=True` (`bench/migration.py --durable`): PostgreSQL's own defaults, as a
    deployment runs it (the compose file's `postgres:16`)."""

    def __init__(self, folder: Path | None = None, port: int | None = None, durable: bool = False):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="planshift-pg-"))
        self.port = port or free_port()
        self.durable = durable
        self.bin = _bindir()
        self._as: list[str] = []
        self.user = os.environ.get("USER") or "postgres"
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            self._as, self.user = ["runuser", "-u", "postgres", "--"], "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise OperationError(f"{Path(argv[0]).name} failed: {(result.stderr or result.stdout).strip()[-800:]}")
        return result

    def start(self, timeout: float = 60.0) -> "LocalPostgres":
        data = self.folder / "data"
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as:  # (every folder above it must let the postgres user pass: /tmp does)
            shutil.chown(self.folder, "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            self._run(str(self.bin / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust",
                      "--encoding=UTF8", "--no-instructions")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.folder} " \
                  "-c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run([*self._as, str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True, check=False)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise OperationError(f"PostgreSQL did not become ready within {timeout:.0f}s "
                                     f"(log: {self.folder / 'server.log'})")
            time.sleep(0.1)
        exists = self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                           "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if exists.stdout.strip() != "1":
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, DATABASE)
        return self

    def stop(self) -> None:
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

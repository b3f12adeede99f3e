"""A stable, unique instance name for a process that was given none (`--instance` unset).

A consumer's instance name is its transactional id and its static group membership
(`group.instance.id`), so two running processes must never share one — they would fence
each other instead of sharing the partitions — while a process restarted after a crash
should take its old name, so that it fences its own zombie at once. Given none, a process
is called `{host}-{slot}`: `PLANSHIFT_INSTANCE` if set, else the host name (unique per
container under Docker Compose's `--scale`), and the lowest slot on this host whose lock
file (`PLANSHIFT_DATA_DIR/instances/{group}-{slot}.lock`) no running process holds. The
kernel drops a lock when its process dies, so a restart takes the slot back.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path

from planshift.settings import Settings

_held: list = []  # the lock files of this process's slots, open until it exits


def _host() -> str:
    name = os.environ.get("PLANSHIFT_INSTANCE") or socket.gethostname() or "host"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:100]


def claim_instance(settings: Settings, group: str, slots: int = 1000) -> str:
    """This process's instance name for `group`, held for as long as the process lives."""
    folder = settings.data_dir / "instances"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(slots):
        handle = open(Path(folder) / f"{group}-{slot}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held.append(handle)
        return f"{_host()}-{slot}"
    raise RuntimeError(f"every one of {slots} instance slots of {group} on this host is taken")

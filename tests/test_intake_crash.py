"""An intake process SIGKILLed mid-stream and restarted leaves no duplicate visible to read_committed."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import date

from planshift.contract import Topic
from planshift.events import with_envelope
from planshift.kafka.reader import read_topic, stable_end_offsets
from planshift.storage.directory import Licence, SqliteDirectory
from producers.samples import upgrade_request
from tests.conftest import kill_when, produce, spawn, wait_for

TENANTS = 3000


def start_intake(settings, log_path):
    return spawn(settings, log_path, "run", "intake", "--commit-every", "25", "--commit-interval-ms", "50",
                 PLANSHIFT_BATCH_SIZE="2")


def test_sigkill_mid_stream_then_restart_leaves_no_duplicates(settings, tmp_path):
    directory = SqliteDirectory.for_settings(settings)
    directory.put(Licence(f"tenant-{t:05d}", f"u{u}", f"tenant-{t:05d}-sub-m365_business_standard",
                          "M365_BUSINESS_STANDARD") for t in range(TENANTS) for u in range(3))
    directory.close()
    requests = [with_envelope(upgrade_request(f"tenant-{t:05d}", f"ord-{t:05d}", today=date.today(), licenses=3),
                              "upgrade.requested") for t in range(TENANTS)]
    produce(settings, Topic.UPGRADE_REQUESTED, [(r["tenant_id"], r) for r in requests])

    status_topic = settings.topic(Topic.UPGRADE_STATUS)
    kill_when(start_intake(settings, tmp_path / "intake.log"),
              lambda: stable_end_offsets(settings, status_topic) > 0, "intake to be under way")
    seen_at_kill = len(read_topic(settings, status_topic))
    assert seen_at_kill < 2 * TENANTS, "intake finished before the kill; the test proves nothing"

    second = start_intake(settings, tmp_path / "intake.log")
    try:
        wait_for(lambda: sum(1 for r in read_topic(settings, status_topic) if r.value["status"] == "migrating")
                 >= TENANTS, 120, interval=0.5, message="every upgrade to reach migrating")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, "intake did not drain and exit cleanly on SIGTERM"
    finally:
        if second.poll() is None:
            second.kill()

    statuses = [r.value for r in read_topic(settings, status_topic)]
    per_upgrade = Counter((s["upgrade_id"], s["status"]) for s in statuses)
    assert len(statuses) == 2 * TENANTS
    assert set(per_upgrade.values()) == {1}, [k for k, n in per_upgrade.items() if n > 1][:5]

    batches = read_topic(settings, settings.topic(Topic.LICENSE_BATCHES))
    keys = Counter(b.key for b in batches)
    assert set(keys.values()) == {1}
    assert len(batches) == 2 * TENANTS  # 3 users in batches of 2
    users = Counter((b.value["tenant_id"], u) for b in batches for u in b.value["user_ids"])
    assert len(users) == 3 * TENANTS and set(users.values()) == {1}

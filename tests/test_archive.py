"""The archiver against the real broker: every event in the lake once, whatever the crashes."""

from __future__ import annotations

import signal
from collections import Counter

import pyarrow.parquet as pq

from planshift.contract import Topic
from planshift.events import event
from planshift.kafka.reader import read_topic
from planshift.storage.lake import Lake
from tests.conftest import kill_when, produce, spawn, wait_for

STATUSES = 20_000  # enough that the archiver cannot finish between two looks at its manifests


def status(n: int) -> dict:
    return event(Topic.UPGRADE_STATUS, f"t{n % 97:03d}", f"e-{n}", upgrade_id=f"ord-{n}", status="accepted",
                 reasons=[])


def archived(lake: Lake, topic: str) -> Counter:
    seen = Counter()
    for path in lake.files(topic):
        table = pq.read_table(path, columns=["partition", "offset"])
        seen.update(zip(table["partition"].to_pylist(), table["offset"].to_pylist()))
    return seen


def start_archiver(settings, log_path, flush_every=300):
    return spawn(settings, log_path, "run", "archive", "--flush-every", str(flush_every), "--flush-interval-s", "0.2")


def test_archiver_killed_mid_write_and_restarted_keeps_every_event_once(settings, tmp_path):
    produce(settings, Topic.UPGRADE_STATUS, [(s["tenant_id"], s) for s in map(status, range(STATUSES))])
    produce(settings, Topic.UPGRADE_STATUS, [("t000", b"{not json")])
    expected = {(r.partition, r.offset) for r in read_topic(settings, settings.topic(Topic.UPGRADE_STATUS))
                if isinstance(r.value, dict)}
    lake = Lake.for_settings(settings)

    kill_when(start_archiver(settings, tmp_path / "archive.log"),
              lambda: len(lake.manifests(Topic.UPGRADE_STATUS)) >= 2, "the archiver to have flushed")
    assert sum(archived(lake, Topic.UPGRADE_STATUS).values()) < len(expected), "finished before the kill"

    # A flush that died between its files and its manifest leaves a file no manifest names.
    partition = next(iter(expected))[0]
    done = lake.next_offset(Topic.UPGRADE_STATUS, partition) or 0
    torn = lake.root / f"topic={Topic.UPGRADE_STATUS}" / "event_date=2099-01-01" / \
        f"part-p{partition:03d}-o{done:012d}-{done + 5:012d}.parquet"
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"PAR1 half a file")

    second = start_archiver(settings, tmp_path / "archive.log")
    try:
        wait_for(lambda: sum(archived(lake, Topic.UPGRADE_STATUS).values()) >= len(expected), 90, interval=0.3,
                 message="every event to be archived")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()

    seen = archived(lake, Topic.UPGRADE_STATUS)
    assert set(seen) == expected and set(seen.values()) == {1}
    assert not torn.exists(), "the torn file of the crashed flush was not removed"
    rows = pq.read_table(lake.files(Topic.UPGRADE_STATUS)[0]).to_pylist()
    assert rows[0]["upgrade_id"].startswith("ord-") and rows[0]["status"] == "accepted" and rows[0]["value"]
    dead = read_topic(settings, settings.topic("upgrade.status.dlq"))
    assert [d.value for d in dead] == [b"{not json"]
    assert dead[0].headers["dlq.consumer.group"] == settings.topic("planshift-archive").encode()

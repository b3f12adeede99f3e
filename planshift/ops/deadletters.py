"""Dead letters after an incident (CONTRACT.md §7): list them, and re-drive them.

`dead_letters` lists a dead-letter topic; `redrive` publishes its records back to their
source topics, exactly once: a bounded run of the runtime sends them and commits the
dead-letter offsets of the `planshift-redrive` group in the same transaction, so a dead
letter is re-driven once however often the command runs or crashes.

Re-driving (like a replay, `offsets.py`) is safe because every planshift consumer is idempotent: a repeated `upgrade_id`
starts nothing, a repeated batch migrates nobody twice, a repeated completion settles
nothing twice, and the archive and reconciliation count each event id once. Re-driven
records reach every consumer of their source topic, not only the one that failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


from planshift.contract import CONSUMED_TOPICS, dlq
from planshift.errors import OperationError
from planshift.kafka.reader import Record, end_offsets, iter_topic
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.runtime.engine import RAW
from planshift.settings import Settings

REDRIVE_GROUP = "planshift-redrive"


def dead_letter_topics() -> list[str]:
    return [dlq(t) for t in CONSUMED_TOPICS]


def dead_letters(settings: Settings, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every committed record of a dead-letter topic (contract name, e.g. `upgrade.requested.dlq`)."""
    return list(iter_topic(settings, settings.topic(topic), timeout))


@dataclass
class RedriveReport:
    topic: str
    redriven: int
    skipped: int  # not matching the chosen group

    def describe(self) -> str:
        text = f"{self.topic}: re-drove {self.redriven} dead letters"
        return text + (f", left {self.skipped} of other groups" if self.skipped else "")


def redrive(settings: Settings, topic: str, group: str | None = None, timeout: float = 30.0) -> RedriveReport:
    """Publish the dead letters not yet re-driven back to their source topic, exactly once.

    A bounded run of the runtime over the dead-letter topic, in the consumer group
    `planshift-redrive`: each record handled is sent back (without its `dlq.*` headers,
    with `dlq.redriven.from`) in the transaction that commits its offset, and the run
    ends once it has read up to where the topic ended when it began."""
    if not topic.endswith(".dlq"):
        raise OperationError(f"{topic} is not a dead-letter topic (they end in .dlq)")
    name = settings.topic(topic)
    ends = end_offsets(settings, name)
    if not ends:
        raise OperationError(f"topic {name!r} does not exist")
    report = RedriveReport(topic, 0, 0)
    chosen = None if group is None else settings.topic(group)

    def send_back(ctx: Context, value: bytes | None) -> None:
        source = ctx.headers.get("dlq.source.topic")
        if source is None or (chosen is not None and ctx.headers.get("dlq.consumer.group", b"").decode() != chosen):
            report.skipped += 1
            return
        headers = [(k, v) for k, v in ctx.headers.items() if not k.startswith("dlq.")]
        headers.append(("dlq.redriven.from", f"{name}:{ctx.partition}:{ctx.offset}".encode()))
        ctx.forward(source.decode(), None if ctx.key is None else ctx.key.encode(), value, headers)
        report.redriven += 1

    config = ProcessorConfig(group_id=REDRIVE_GROUP, sources=(Source(topic, send_back, schema=RAW),),
                             stateful=False, instance=topic, max_attempts=1, poll_timeout_ms=200)
    deadline = time.monotonic() + timeout

    def done(processor: StreamProcessor) -> bool:
        if time.monotonic() > deadline:
            raise TimeoutError(f"re-driving {name} did not finish within {timeout:.0f}s")
        return processor.caught_up(topic, ends)

    StreamProcessor(settings, config).run(until=done)
    return report

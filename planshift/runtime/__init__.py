"""The processing runtime every planshift consumer runs on.

`StreamProcessor` consumes `read_committed`, hands each record to the consumer's
handler, and writes the handler's output events, its state changes (to a compacted
changelog) and the consumed offsets in one Kafka transaction. See `processor.py` for
the commit protocol.
"""

from planshift.runtime.context import Context, Output
from planshift.runtime.engine import ProcessorConfig, Source
from planshift.runtime.processor import StreamProcessor

__all__ = ["Context", "Output", "ProcessorConfig", "Source", "StreamProcessor"]

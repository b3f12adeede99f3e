"""Process-wide tuning, done once by the entry points that own their process (`planshift run …`,
`planshift reconcile`, the benchmarks), never by a library call: a test or the demo that
runs a consumer or the reconciliation in its own process keeps its defaults.
"""

from __future__ import annotations

import ctypes
import gc


def for_consumer() -> None:
    """Full garbage collections at most once per 100 young-generation rounds (default 10).

    A processor keeps its partitions' state in memory and it grows with every record,
    so CPython's rule (a full collection whenever a quarter more objects have survived)
    fires every few thousand records and walks all of them. Records and events
    themselves are freed by reference counting; only cyclic garbage waits longer for a
    full collection. Never lowers a threshold set by the host."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, max(old, 100))


def for_reconcile() -> None:
    """Keep freed memory for reuse instead of handing it back to the kernel at once.

    The job allocates and frees many large, short-lived arrays; by default both Arrow's
    allocator and glibc's return that memory straight away, and the next array of the
    same size faults it in again page by page."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(1000)
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pass
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 1 << 28)
    libc.mallopt(m_mmap_threshold, 1 << 25)  # glibc's ceiling on 64-bit

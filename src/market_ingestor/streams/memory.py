"""How the worker process manages its memory: the cycle collector's thresholds (:func:`tune_cycle_collector`) and
the C allocator's handing back of large buffers (``streams.malloc_mmap_threshold_bytes``).

Python's cycle collector runs a young collection every 700 net allocations of container objects and, every 100 of
those, a full one over every tracked object. On bench/klines.py (1M trades, defaults; counted with
``gc.callbacks``) that was ~2,300 young and 19 full collections, 2.0 s of ~30 s of CPU, each full one a 90 ms stop
of the event loop (168 ms before the indicator and kline state structs were untracked, ``gc=False``: they never
form cycles). The worker's containers are long-lived state or short-lived batches freed by reference counting;
its cycles are few (asyncio and Kafka client internals), so collecting the young every 50,000 allocations, the
middle every 20 of those and fully every 10 of the middle (:data:`WORKER_GC_THRESHOLDS`) changes no peak RSS
(289-295 MB) and took the collector's time to 0.45 s (docs/benchmarks.md, "The cycle collector").

The worker's large allocations are short-lived: fetched Kafka records (a batch record of trades is ~140 KB), their
decoded values and the output records it builds. glibc's malloc serves a block above its mmap threshold (128 KiB at
start) with its own mapping, returned to the system when freed, but every such free raises the threshold (up to
32 MiB), so soon these buffers come from the heap instead, where a few long-lived small blocks between them keep
the freed space from being returned: on bench/klines.py (1M trades, defaults) 25-40 MB of the worker's peak RSS was
free heap. A fixed threshold (setting it also turns the adjustment off) keeps them in their own mappings, at the
cost of a fresh mapping (page faults, zeroed pages) for every large buffer: 128 KiB measured ~22 MB less peak RSS
and ~15% more CPU per trade, so it is off (0) by default (docs/benchmarks.md).

Only glibc has ``mallopt``; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
# gc.set_threshold for the worker: young collections per 50,000 net container allocations, the middle generation
# every 20 of those, a full collection every 10 of the middle (Python's defaults: 700, 10, 10).
WORKER_GC_THRESHOLDS = (50_000, 20, 10)


def tune_cycle_collector() -> tuple[int, int, int]:
    """Sets :data:`WORKER_GC_THRESHOLDS` for this process; returns the thresholds it had."""
    before = gc.get_threshold()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    return before


def set_mmap_threshold(threshold_bytes: int) -> bool:
    """Blocks of at least ``threshold_bytes`` get their own mapping from now on (0: leave the allocator as it is).
    True if the allocator took the setting."""
    if threshold_bytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("no mallopt in this C library: streams.malloc_mmap_threshold_bytes does not apply")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold_bytes) != 1:
        log.warning("the C library refused malloc_mmap_threshold_bytes = %d; left as it was", threshold_bytes)
        return False
    return True

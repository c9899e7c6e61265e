"""``streams.malloc_mmap_threshold_bytes``: glibc takes the threshold; 0 leaves the allocator alone. The cycle
collector's thresholds, and the state it need not walk."""

from __future__ import annotations

import gc
import platform
import subprocess
import sys

import pytest

from market_ingestor.streams.memory import WORKER_GC_THRESHOLDS, set_mmap_threshold, tune_cycle_collector

GLIBC = platform.libc_ver()[0] == "glibc"


def test_zero_leaves_the_allocator_alone():
    assert set_mmap_threshold(0) is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_glibc_takes_the_threshold_and_a_freed_large_block_goes_back_to_the_system():
    # In a fresh interpreter: the threshold is process-wide. A 1 MiB block under a 128 KiB threshold is a mapping
    # of its own, so allocating and freeing it leaves the heap (mallinfo2's ``arena``) as it was.
    script = """
import ctypes, ctypes.util
from market_ingestor.streams.memory import set_mmap_threshold

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
assert set_mmap_threshold(128 * 1024)
for _ in range(3):  # without a fixed threshold, the first free raises glibc's above 1 MiB: the next blocks
    block = libc.malloc(1 << 20)  # would come from the heap
    mapped = libc.mallinfo2().hblkhd
    libc.free(block)
    assert mapped - libc.mallinfo2().hblkhd >= 1 << 20, "the block was not a mapping of its own"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_the_worker_collects_cycles_less_often_and_says_what_it_had():
    before = gc.get_threshold()
    try:
        assert tune_cycle_collector() == before
        assert gc.get_threshold() == WORKER_GC_THRESHOLDS
        assert WORKER_GC_THRESHOLDS[0] > before[0]  # fewer young collections than Python's default
    finally:
        gc.set_threshold(*before)


def test_the_kline_and_indicator_state_is_not_tracked_by_the_cycle_collector():
    # Long-lived state that never forms cycles: tracked, every full collection walked it (~40% of its time).
    from market_ingestor.indicators import DEFAULT_SPECS, parse_spec
    from market_ingestor.indicators.core import Avg, Window
    from market_ingestor.streams.klines import InstrumentKlines, KlineSettings

    for spec in DEFAULT_SPECS:
        indicator = parse_spec(spec)
        assert not gc.is_tracked(indicator), spec
        assert not gc.is_tracked(type(indicator).from_bytes(indicator.to_bytes())), spec
    assert not gc.is_tracked(Window()) and not gc.is_tracked(Avg())
    state = InstrumentKlines.new("binance", "BTCUSDT", KlineSettings())
    assert not any(gc.is_tracked(level) for level in state._s.levels)

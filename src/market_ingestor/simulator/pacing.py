"""Pacing the market: one loop per exchange wakes every time slice and emits what is due since the start, rather
than sleeping once per trade, so hundreds of thousands of trades per second cost a hundred wake-ups.

Each due step is rendered once per subscribed stream and the frames are shared by all its sessions. Normally
fan-out never waits: a full outbox makes its session a slow consumer. While the slow-send fault is on the
slowness is ours, so the loop waits for room instead and the market of that exchange runs slower.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator.session import OutFrame, Session
from market_ingestor.simulator.venue import Venue


@dataclass(frozen=True, slots=True)
class Pace:
    trades_per_s: float  # per symbol
    slice_s: float = 0.01
    book_interval_s: float = 0.1  # a symbol without trades still updates its book this often
    # After a pause (slow sends, an overloaded loop) at most this much is caught up: an overloaded simulator sends
    # less than asked, in steps of bounded size, rather than ever larger bursts.
    max_backlog_s: float = 0.1


async def run_market(venue: Venue, pace: Pace) -> None:
    market = venue.market
    if market is None:
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    emitted = dict.fromkeys(market.symbols, 0)
    last_step = dict.fromkeys(market.symbols, -math.inf)
    steps = dict.fromkeys(market.symbols, 0)
    backlog = max(1, int(pace.trades_per_s * pace.max_backlog_s))
    gap_every = venue.faults.config.gap_every
    while True:
        await asyncio.sleep(pace.slice_s)
        now, ts_ns = loop.time(), time.time_ns()
        target = int((now - started) * pace.trades_per_s)
        for symbol in market.symbols:
            due = min(target - emitted[symbol], backlog)
            if due <= 0 and now - last_step[symbol] < pace.book_interval_s:
                continue
            emitted[symbol] = target if due > 0 else emitted[symbol]
            last_step[symbol] = now
            steps[symbol] += 1
            if gap_every and steps[symbol] % gap_every == 0:
                market.inject_gap(symbol)
            await _step(venue, symbol, max(due, 0), ts_ns)
        venue.reap_slow_consumers(now)
        venue.notify()


async def _step(venue: Venue, symbol: str, n_trades: int, ts_ns: int) -> None:
    market, dialect = venue.market, venue.dialect
    assert market is not None and dialect is not None
    result = market.step(symbol, n_trades, ts_ns)
    venue.counters.trades_generated += n_trades
    venue.counters.book_updates += 1
    key, native, index = venue.key(symbol), venue.native_of[symbol], venue.index
    if result.trades and (sessions := index.get((Channel.TRADES, key))):
        await _fan_out(venue, sessions, venue.trade_frames(symbol, result.trades))
    if sessions := index.get((Channel.BOOK, key)):
        await _fan_out(venue, sessions, [OutFrame(dialect.render_book_delta(native, result.delta), symbol=symbol)])
    if result.quote is not None and (sessions := index.get((Channel.QUOTES, key))):
        await _fan_out(venue, sessions, [OutFrame(dialect.render_quote(native, result.quote), symbol=symbol)])


async def _fan_out(venue: Venue, sessions: set[Session], frames: Iterable[OutFrame]) -> None:
    if venue.faults.slow_send_ms:
        for frame in frames:
            for session in tuple(sessions):  # the set may change while we wait for room
                await session.queue.put(frame)
        return
    for frame in frames:
        for session in sessions:
            session.send(frame)

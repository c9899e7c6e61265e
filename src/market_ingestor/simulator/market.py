"""The simulated market: per instrument a mid price doing a random walk on its tick grid, a book of ``depth``
levels per side around it, and trades against the top of the book. Exchange-neutral, pure and seeded: the same
calls on a market built with the same seed give the same values.

Prices are kept as integer ticks and quantities as integer lots, so every value is on its grid by construction;
they become Decimals (``tick * n``, exact) only on the way out. Random choices use ``random.Random`` integers only.

A step is one update of one instrument: ``n`` trades hit the top of the book (each at most the level's quantity,
consuming it), the mid moves by at most one tick, the book is refilled to its window of ``depth`` levels per side
(bids at ``mid-1, mid-2, ...``, asks at ``mid+1, ...``) and a few levels change size. The step yields the trades,
one book delta (sequence number +1) and a quote when the top of the book changed.

A gap (``inject_gap``) models lost messages: trade ids are skipped, and hidden book updates are applied and
consume sequence numbers without being emitted. The next delta therefore says it follows an update the client
never saw (``prev_seq == first_seq - 1``, larger than the client's last sequence number), which every sequence
rule detects; the hidden updates resize a level inside the top ten, so a checksum of the client's book no longer
matches either (unless the very next step rewrites that level, as steps of a thousand trades do).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from market_ingestor.errors import ConfigError
from market_ingestor.simulator.dialect import (
    Levels,
    SimBook,
    SimBookDelta,
    SimInstrument,
    SimQuote,
    SimTrade,
)

# Longest first: BTCUSDT must split as BTC/USDT, not BTCUSD/T.
KNOWN_QUOTES: tuple[str, ...] = ("USDT", "USDC", "USD", "EUR", "BTC", "ETH")

# Rough USD prices so simulated books look plausible; other assets get a stable pseudo-random price.
_USD_PRICES: dict[str, Decimal] = {
    "BTC": Decimal(60000),
    "ETH": Decimal(3000),
    "BNB": Decimal(600),
    "SOL": Decimal(150),
    "LTC": Decimal(80),
    "XRP": Decimal("0.5"),
    "ADA": Decimal("0.4"),
    "DOGE": Decimal("0.15"),
    "USDT": Decimal(1),
    "USDC": Decimal(1),
    "USD": Decimal(1),
    "EUR": Decimal("1.08"),
}

_MAX_TRADE_LOTS = 50
_LEVEL_LOTS = (10, 2000)  # a refilled level's size, in lots
_TWEAKS_PER_STEP = (1, 3)  # levels that change size on each step besides trades and refills
_HIDDEN_LEVEL = 5  # the level a gap's lost updates resize


def _usd_price(asset: str) -> Decimal:
    known = _USD_PRICES.get(asset)
    # crc32, not hash(): str hashes change between processes, and listings must be the same every run.
    return known if known is not None else Decimal(1 + zlib.crc32(asset.encode()) % 100)


def _power_of_ten(exponent: int) -> Decimal:
    # Integers for exponents >= 0 so the value prints as "10", never "1E+1".
    return Decimal(10**exponent) if exponent >= 0 else Decimal(1).scaleb(exponent)


def instrument_for(symbol: str) -> SimInstrument:
    """The simulator's own listing entry for a normalized symbol: ``BTCUSDT`` -> BTC/USDT, tick 0.1, lot 0.00001.

    The quote is one of :data:`KNOWN_QUOTES`, split from the end; the tick gives about five significant digits of
    price and the lot is worth about a tenth of a dollar or less.
    """
    if not symbol.isalnum() or symbol.upper() != symbol:
        raise ConfigError(f"cannot simulate {symbol!r}: expected a normalized spot symbol such as BTCUSDT")
    for quote in KNOWN_QUOTES:
        base = symbol[: -len(quote)]
        if symbol.endswith(quote) and base:
            break
    else:
        raise ConfigError(f"cannot simulate {symbol!r}: its quote asset must be one of {', '.join(KNOWN_QUOTES)}")
    price = _usd_price(base) / _usd_price(quote)
    tick = _power_of_ten(price.adjusted() - 5)
    lot = _power_of_ten(-(_usd_price(base).adjusted() + 1))
    return SimInstrument(base=base, quote=quote, tick=tick, lot=lot)


def reference_price(instrument: SimInstrument) -> Decimal:
    """Where an instrument's mid price starts, on its tick grid."""
    price = _usd_price(instrument.base) / _usd_price(instrument.quote)
    return (price / instrument.tick).to_integral_value() * instrument.tick


@dataclass(frozen=True, slots=True)
class StepResult:
    trades: tuple[SimTrade, ...]
    quote: SimQuote | None  # None when the top of the book did not change
    delta: SimBookDelta


_Top = tuple[int, int, int, int]  # best bid ticks, its lots, best ask ticks, its lots


@dataclass(slots=True)
class _Instrument:
    """One instrument's state, all in integer ticks and lots."""

    info: SimInstrument
    mid: int
    seq: int
    trade_id: int
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    last_top: _Top | None = None
    pending_gap: int = 0
    prices: dict[int, Decimal] = field(default_factory=dict)  # Decimal caches: the window moves slowly
    qtys: dict[int, Decimal] = field(default_factory=dict)

    def price(self, ticks: int) -> Decimal:
        value = self.prices.get(ticks)
        if value is None:
            if len(self.prices) > 4096:
                self.prices.clear()
            value = self.prices[ticks] = self.info.tick * ticks
        return value

    def qty(self, lots: int) -> Decimal:
        value = self.qtys.get(lots)
        if value is None:
            value = self.qtys[lots] = self.info.lot * lots
        return value


class Market:
    """Random-walk markets for a set of instruments. Pure: time comes in as ``ts_ns`` arguments."""

    def __init__(self, symbols: Iterable[str], seed: int | str = 0, depth: int = 25) -> None:
        if depth < 1:
            raise ConfigError(f"book depth must be at least 1, got {depth}")
        self.depth = depth
        self._rng = random.Random(seed)
        self._state: dict[str, _Instrument] = {}
        for symbol in symbols:
            info = instrument_for(symbol)
            # Large starting ids, as real exchanges have; a client must not rely on them starting at 1.
            state = _Instrument(
                info=info,
                mid=max(int(reference_price(info) / info.tick), depth + 2),
                seq=self._rng.randrange(1_000_000, 2_000_000),
                trade_id=self._rng.randrange(1_000_000, 2_000_000),
            )
            self._refill(state)
            state.last_top = self._top(state)
            self._state[symbol] = state

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._state)

    def instrument(self, symbol: str) -> SimInstrument:
        return self._state[symbol].info

    def instruments(self) -> tuple[SimInstrument, ...]:
        return tuple(state.info for state in self._state.values())

    def inject_gap(self, symbol: str, updates: int = 1) -> None:
        """The next step skips ``updates`` trade ids and book updates (see the module docstring)."""
        if updates < 1:
            raise ValueError(f"a gap skips at least one update, got {updates}")
        self._state[symbol].pending_gap += updates

    def book(self, symbol: str, ts_ns: int) -> SimBook:
        state = self._state[symbol]
        return self._book(state, ts_ns)

    def step(self, symbol: str, n_trades: int, ts_ns: int) -> StepResult:
        state = self._state[symbol]
        rng = self._rng
        if state.pending_gap:
            self._hidden_updates(state, state.pending_gap)
            state.trade_id += state.pending_gap
            state.pending_gap = 0
        bids_before, asks_before = dict(state.bids), dict(state.asks)
        prev_seq = state.seq

        trades = tuple(self._trade(state, ts_ns) for _ in range(n_trades))
        # The walk: -1, 0 or +1 tick, reflected where it would leave room for fewer than ``depth`` bids.
        move = rng.randint(-1, 1)
        if state.mid + move <= self.depth + 1:
            move = 1
        state.mid += move
        self._refill(state)
        for _ in range(rng.randint(*_TWEAKS_PER_STEP)):
            side = state.bids if rng.getrandbits(1) else state.asks
            offset = rng.randrange(self.depth) + 1
            ticks = state.mid - offset if side is state.bids else state.mid + offset
            side[ticks] = rng.randint(*_LEVEL_LOTS)

        state.seq += 1
        book = self._book(state, ts_ns)
        delta = SimBookDelta(
            bids=self._changes(state, bids_before, state.bids, reverse=True),
            asks=self._changes(state, asks_before, state.asks, reverse=False),
            first_seq=state.seq,
            last_seq=state.seq,
            prev_seq=prev_seq,
            ts_ns=ts_ns,
            book=book,
        )
        top = self._top(state)
        quote = None
        if top != state.last_top:
            state.last_top = top
            quote = SimQuote(
                bid_price=state.price(top[0]),
                bid_qty=state.qty(top[1]),
                ask_price=state.price(top[2]),
                ask_qty=state.qty(top[3]),
                seq=state.seq,
                ts_ns=ts_ns,
            )
        return StepResult(trades=trades, quote=quote, delta=delta)

    def _trade(self, state: _Instrument, ts_ns: int) -> SimTrade:
        # One draw for side and size: this runs for every trade, hundreds of thousands of times a second.
        bits = self._rng.getrandbits(7)
        side: Literal["buy", "sell"] = "buy" if bits & 1 else "sell"
        wanted = 1 + (bits >> 1) % _MAX_TRADE_LOTS
        if not (state.asks if side == "buy" else state.bids):
            self._refill(state)  # many trades in one step may empty a side; the refill replaces the dicts
        # A buyer takes the best ask, a seller the best bid: the first level out from the mid.
        if side == "buy":
            levels, ticks, step = state.asks, state.mid + 1, 1
        else:
            levels, ticks, step = state.bids, state.mid - 1, -1
        while ticks not in levels:
            ticks += step
        lots = min(wanted, levels[ticks])
        if lots == levels[ticks]:
            del levels[ticks]  # the level ran dry
        else:
            levels[ticks] -= lots
        state.trade_id += 1
        return SimTrade(state.trade_id, state.price(ticks), state.qty(lots), side, ts_ns)

    def _refill(self, state: _Instrument) -> None:
        """Keeps exactly the window: drops levels outside it, adds the missing ones with a random size."""
        rng, depth, mid = self._rng, self.depth, state.mid
        state.bids = {t: q for t, q in state.bids.items() if mid - depth <= t < mid}
        state.asks = {t: q for t, q in state.asks.items() if mid < t <= mid + depth}
        for offset in range(1, depth + 1):
            if mid - offset not in state.bids:
                state.bids[mid - offset] = rng.randint(*_LEVEL_LOTS)
            if mid + offset not in state.asks:
                state.asks[mid + offset] = rng.randint(*_LEVEL_LOTS)

    def _hidden_updates(self, state: _Instrument, count: int) -> None:
        # The lost updates resize the fifth level of each side: inside any exchange's checksum depth (10 or 25),
        # yet deep enough that the next visible delta rarely sends it again (trades and the walk move the top).
        offset = min(_HIDDEN_LEVEL, self.depth)
        for _ in range(count):
            for side, ticks in ((state.bids, state.mid - offset), (state.asks, state.mid + offset)):
                side[ticks] = side.get(ticks, 0) % _LEVEL_LOTS[1] + 1
            state.seq += 1

    @staticmethod
    def _top(state: _Instrument) -> _Top:
        best_bid, best_ask = max(state.bids), min(state.asks)
        return best_bid, state.bids[best_bid], best_ask, state.asks[best_ask]

    @staticmethod
    def _changes(state: _Instrument, before: dict[int, int], after: dict[int, int], reverse: bool) -> Levels:
        changed = sorted(
            (ticks for ticks in before.keys() | after.keys() if before.get(ticks) != after.get(ticks)),
            reverse=reverse,
        )
        return tuple((state.price(ticks), state.qty(after.get(ticks, 0))) for ticks in changed)

    @staticmethod
    def _book(state: _Instrument, ts_ns: int) -> SimBook:
        bids = tuple((state.price(t), state.qty(state.bids[t])) for t in sorted(state.bids, reverse=True))
        asks = tuple((state.price(t), state.qty(state.asks[t])) for t in sorted(state.asks))
        return SimBook(bids=bids, asks=asks, seq=state.seq, ts_ns=ts_ns)

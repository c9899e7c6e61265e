"""The indicator agent's RocksDB row (pure, no Kafka): one series per interval, rows of the previous per-indicator
format load and are rewritten interval by interval, and the row of the default configuration stays small."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from faust.types import TP

from market_ingestor.indicators import DEFAULT_SPECS, compute, parse_spec
from market_ingestor.indicators.series import horizon
from market_ingestor.model import IndicatorValue, Kline, encode
from market_ingestor.streams import indicators
from market_ingestor.streams.indicators import IndicatorAgent, Row, RowCache
from market_ingestor.streams.marks import InputMarks
from market_ingestor.streams.outputs import InputLimits
from market_ingestor.windows import parse_interval

START = 1_704_067_200 * 10**9  # 2024-01-01T00:00Z
INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")
SPECS = tuple(DEFAULT_SPECS)


def walk(interval: str, count: int, seed: int = 1) -> list[Kline]:
    rng, step, price, out = random.Random(seed), parse_interval(interval).ns, Decimal("42000.00"), []
    for i in range(count):
        close = price + Decimal(rng.randint(-2500, 2500)) / 100
        high, low = max(price, close) + Decimal(rng.randint(0, 900)) / 100, min(price, close) - Decimal(9)
        volume = Decimal(rng.randint(1, 10**6)) / 10**4
        quote = (volume * low).quantize(Decimal("0.000001"))
        out.append(
            Kline(
                "binance", "BTCUSDT", interval, START + i * step, START + (i + 1) * step - 1, price, high, low, close,
                volume, quote, 100, volume / 2, quote / 2, None, None, quote / volume, True,
            )
        )  # fmt: skip
        price = close
    return out


def size(interval: str) -> int:
    return horizon(parse_interval(interval).ns, 600_000)


def old_row(klines: dict[str, list[Kline]]) -> bytes:
    """A row as the previous version of the agent wrote it: interval -> indicator -> state bytes."""
    row = {}
    for interval, series in klines.items():
        states = {spec: parse_spec(spec) for spec in SPECS}
        for kline in series:
            for state in states.values():
                state.update(kline)
        row[interval] = {spec: state.to_bytes() for spec, state in states.items()}
    return msgspec.msgpack.encode(row)


def test_a_row_of_the_previous_format_loads_and_is_rewritten_interval_by_interval() -> None:
    klines = {interval: walk(interval, 60) for interval in ("1m", "5m")}
    stored = old_row({interval: series[:50] for interval, series in klines.items()})
    row = Row(stored, SPECS)
    emitted = []
    for kline in klines["1m"][50:]:
        emitted += row.get("1m", size("1m")).update(kline)
    # The 1m values go on exactly as one indicator fed the whole series would have them; 5m is untouched.
    want = [v for spec in SPECS for v in compute(spec, klines["1m"]) if v.open_time >= klines["1m"][50].open_time]
    assert sorted(emitted, key=lambda v: (v.name, v.open_time)) == sorted(want, key=lambda v: (v.name, v.open_time))
    rewritten = msgspec.msgpack.decode(row.to_bytes())
    assert isinstance(rewritten["1m"], bytes) and isinstance(rewritten["5m"], dict)
    again = Row(row.to_bytes(), SPECS)
    nxt = walk("1m", 61)[60]
    assert again.get("1m", size("1m")).update(nxt) == [
        v for spec in SPECS for v in compute(spec, [*klines["1m"], nxt]) if v.open_time == nxt.open_time
    ]
    # The 5m states of the previous format still load and go on.
    assert again.get("5m", size("5m")).update(klines["5m"][50]) == [
        v for spec in SPECS for v in compute(spec, klines["5m"][:51]) if v.open_time == klines["5m"][50].open_time
    ]


def test_the_row_of_the_default_configuration_stays_a_few_kilobytes() -> None:
    """1,000 instruments x 6 intervals: the rows must stay small (RocksDB, and one row decoded per batch)."""
    klines = {interval: walk(interval, 300) for interval in INTERVALS}
    row = Row(None, SPECS)
    for interval, series in klines.items():
        for kline in series:
            row.get(interval, size(interval)).update(kline)
    new, old = len(row.to_bytes()), len(old_row(klines))
    assert [len(row.series[i].history) for i in INTERVALS] == [12, 4, 3, 3, 3, 3]
    assert new < old + 3000 < 16_000, (new, old)


# --- the agent's row cache (pure: a dict for the table, a list for the bus) -------------------------------------


class Assignment:
    """The consumer's assigned partitions: every one, minus those a test revokes."""

    def __init__(self) -> None:
        self.revoked: set[TP] = set()

    def __contains__(self, tp: object) -> bool:
        return tp not in self.revoked


class FakeWriter:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.handoffs: list[int] = []  # values per send_all call
        self.fail_flush = False
        self.revoke_at_flush: set[TP] = set()  # a rebalance that revokes these while the values are being sent
        self.assignment = Assignment()

    async def send_all(self, topic: str, events: Iterable[tuple[bytes, bytes, TP]]) -> None:
        handed = [(key, value) for key, value, _ in events]
        self.handoffs.append(len(handed))
        self.sent.extend(handed)

    async def flush(self) -> None:
        if self.fail_flush:
            raise RuntimeError("the broker is gone")
        self.assignment.revoked |= self.revoke_at_flush

    async def save(self, table: dict[bytes, bytes], key: bytes, value: bytes, source: TP) -> None:
        table[key] = value

    async def commit_input(self, offsets: dict[TP, int]) -> None:
        pass

    def next_offset(self, tp: TP) -> int | None:  # the input marks' check: nothing known, rows taken as they are
        return None

    def forget(self, sources: object) -> None:
        pass

    def owned(self) -> Assignment:  # PartitionWriter's view of the assignment, revocations excluded
        return self.assignment

    def current(self, events: list[Any]) -> list[Any]:  # one generation here: the owned partitions' events
        return [event for event in events if event.message.tp in self.assignment]


class Table(dict[bytes, bytes]):
    pass


def agent(cache_rows: int) -> IndicatorAgent:
    """An IndicatorAgent without Faust: only what ``process`` touches."""
    built = IndicatorAgent.__new__(IndicatorAgent)
    built.specs, built.max_lateness_ms = SPECS, 600_000
    built.out = SimpleNamespace(get_topic_name=lambda: "market.indicators")  # type: ignore[assignment]
    built.table = Table()  # type: ignore[assignment]
    writer = built.writer = FakeWriter()  # type: ignore[assignment]
    built.app = SimpleNamespace(  # type: ignore[assignment]
        consumer=SimpleNamespace(assignment=lambda: writer.assignment), consumer_generation_id=1
    )
    built.marks = InputMarks(built.app, built.table, writer, "indicators", built._forget)  # type: ignore[arg-type]
    built.rows = RowCache(cache_rows)
    built.limits = InputLimits()
    built._horizons = {}
    built._lock = asyncio.Lock()  # a batch and a revocation take turns
    return built


def records(symbols: int, count: int, start: int = 0) -> list[Any]:
    """Records of 1m klines, each record one minute of every symbol (all on partition 0 of the klines topic)."""
    series = {n: walk("1m", start + count, seed=n) for n in range(symbols)}
    out = []
    for i in range(start, start + count):
        klines = [msgspec.structs.replace(series[n][i], symbol=f"S{n}USDT") for n in range(symbols)]
        value = b"[" + b",".join(encode(k) for k in klines) + b"]"
        out.append(SimpleNamespace(value=value, message=SimpleNamespace(tp=TP("market.klines", 0), offset=i)))
    return out


async def run(built: IndicatorAgent, batches: list[list[Any]]) -> None:
    for batch in batches:
        await built.process(batch)


async def test_a_cache_smaller_than_a_batch_changes_no_value_and_no_row() -> None:
    """Rows evicted from the cache while their batch runs are still the ones saved (never re-read stale)."""
    batches = [records(5, 10, start) for start in (0, 10, 20, 30)]
    big, small = agent(100), agent(2)
    await run(big, batches)
    await run(small, batches)
    assert len(small.rows) == 2 and len(big.rows) == 5
    assert small.writer.sent == big.writer.sent  # type: ignore[attr-defined]
    assert small.table == big.table
    want = [v for spec in SPECS for v in compute(spec, walk("1m", 40, seed=3))]
    got = [
        msgspec.json.decode(value, type=IndicatorValue) for key, value in big.writer.sent if key == b"binance.S3USDT"
    ]  # type: ignore[attr-defined]
    assert sorted(got, key=lambda v: (v.name, v.open_time)) == [
        msgspec.structs.replace(v, symbol="S3USDT") for v in sorted(want, key=lambda v: (v.name, v.open_time))
    ]


async def test_a_batch_hands_its_values_to_the_writer_a_bounded_number_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The values of a batch are encoded and handed over in chunks (not one coroutine each, not all at once: a
    batch of 8 MB of klines gives ~100k values), in the order they were computed."""
    batches = [records(5, 10, start) for start in (0, 10)]
    whole = agent(100)
    await run(whole, batches)
    monkeypatch.setattr(indicators, "SEND_EVERY", 7)
    chunked = agent(100)
    await run(chunked, batches)
    assert chunked.writer.sent == whole.writer.sent  # type: ignore[attr-defined]
    handoffs = chunked.writer.handoffs  # type: ignore[attr-defined]
    assert len(handoffs) > len(batches) and max(handoffs) < 7 + len(SPECS)  # one kline's values past the bound


async def test_a_failed_batch_clears_the_cache_and_its_redelivery_changes_nothing() -> None:
    """The cached rows hold klines whose row was never saved: after the failure they are read again, so the
    re-delivered batch gives exactly what one clean run gives."""
    batches = [records(3, 8, start) for start in (0, 8, 16)]
    clean, failing = agent(100), agent(100)
    for built in (clean, failing):
        await run(built, batches[:1])
    failing.writer.fail_flush = True  # type: ignore[attr-defined]
    failing.writer.batches = lambda stream, limits: _aiter([batches[1]])  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broker"):
        await failing.compute(SimpleNamespace())
    assert len(failing.rows) == 0
    failing.writer.fail_flush = False  # type: ignore[attr-defined]
    for built in (clean, failing):
        built.writer.sent.clear()  # type: ignore[attr-defined]
        await run(built, batches[1:])  # batch 1 again after the failure, then batch 2
    assert failing.table == clean.table
    assert failing.writer.sent == clean.writer.sent  # type: ignore[attr-defined]
    since = START + 8 * parse_interval("1m").ns  # the values of klines 8..23 of each symbol, each once
    want = [
        v for n in range(3) for spec in SPECS for v in compute(spec, walk("1m", 24, seed=n)) if v.open_time >= since
    ]
    assert len(clean.writer.sent) == len(want) > 0  # type: ignore[attr-defined]


async def test_revoked_partitions_drop_their_cached_rows() -> None:
    built = agent(100)
    await run(built, [records(2, 2)])  # S0USDT and S1USDT, from partition 0
    kline = msgspec.structs.replace(walk("1m", 1)[0], symbol="P1USDT")
    other = SimpleNamespace(
        value=b"[" + encode(kline) + b"]", message=SimpleNamespace(tp=TP("market.klines", 1), offset=0)
    )
    await built.process([other])
    assert len(built.rows) == 3
    await built.on_revoked(SimpleNamespace(), {TP("market.klines", 0)})  # type: ignore[arg-type]
    assert len(built.rows) == 1 and built.rows.get(b"binance.P1USDT") is not None
    assert built.rows.get(b"binance.S0USDT") is None and b"binance.S0USDT" in built.table  # saved, not cached


async def test_rows_of_a_partition_revoked_during_the_sends_are_not_written_to_its_changelog() -> None:
    # The new owner writes that changelog now: an older row from here would undo its work.
    built = agent(100)
    built.writer.revoke_at_flush = {TP("market.klines", 0)}  # type: ignore[attr-defined]
    await run(built, [records(2, 2)])
    assert built.writer.sent and not built.table  # type: ignore[attr-defined]
    # Nor are records of a partition no longer assigned applied at all.
    sent = len(built.writer.sent)  # type: ignore[attr-defined]
    await run(built, [records(2, 2, start=2)])
    assert len(built.writer.sent) == sent and not built.table  # type: ignore[attr-defined]


async def _aiter(items: list[Any]) -> Any:
    for item in items:
        yield item


def test_a_closed_kline_encodes_the_mark_the_indicator_agent_looks_for() -> None:
    from decimal import Decimal

    from market_ingestor.model import Kline, encode
    from market_ingestor.streams.indicators import CLOSED_MARK

    one = Decimal(1)
    kline = Kline(
        exchange="binance", symbol="BTCUSDT", interval="1m", open_time=0, close_time=59, open=one, high=one, low=one,
        close=one, volume=one, quote_volume=one, trade_count=1, taker_buy_volume=one, taker_buy_quote_volume=one,
        first_trade_id="1", last_trade_id="1", vwap=one, closed=True, revision=0,
    )  # fmt: skip
    assert CLOSED_MARK in encode(kline)
    assert CLOSED_MARK not in encode(msgspec.structs.replace(kline, closed=False))

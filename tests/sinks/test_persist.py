"""The persister with an in-memory writer: decoding and dead letters, retries with backoff, refused rows found by
splitting the batch. (The same code against the real PostgreSQL: test_sink_service.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal

import asyncpg
import pytest

from market_ingestor.errors import StorageError, StorageUnavailable
from market_ingestor.model import DeadLetter, IndicatorValue, Trade, encode
from market_ingestor.sinks import metrics
from market_ingestor.sinks.persist import Backoff, Persister, Row, RowDecoder, is_data_error

TS = 1_700_000_000_000_000_000


def trade(n: int, price: str = "100.5") -> Trade:
    return Trade("binance", "BTCUSDT", str(n), Decimal(price), Decimal("0.25"), "buy", TS + n, TS + n)


class MemoryWriter:
    """Stores rows by identity; can fail the next writes, or refuse any batch holding a poisoned trade id."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.transactions = 0
        self.starts = 0
        self.unavailable_for = 0
        self.poisoned: set[str] = set()

    async def start(self) -> None:
        self.starts += 1

    async def close(self) -> None:
        pass

    async def maintain(self) -> None:
        pass

    async def write(self, events: Sequence[Row]) -> None:
        self.transactions += 1
        if self.unavailable_for:
            self.unavailable_for -= 1
            raise StorageUnavailable("the database is unavailable (ConnectionResetError); retry later")
        bad = [e for e in events if isinstance(e, Trade) and e.trade_id in self.poisoned]
        if bad:
            cause = asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00")
            raise StorageError("writing a batch: invalid byte sequence") from cause
        for event in events:
            assert isinstance(event, Trade)
            self.rows[event.trade_id] = event


class Letters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def __call__(self, letters: Sequence[DeadLetter]) -> None:
        self.sent.extend(letters)


FAST = Backoff(initial_s=0.001, max_s=0.004)


def test_backoff_doubles_up_to_its_bound():
    delays = Backoff(0.1, 0.5).delays()
    assert [next(delays) for _ in range(6)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]


async def test_undecodable_and_non_finite_records_become_dead_letters_and_the_rest_is_written():
    writer, letters = MemoryWriter(), Letters()
    persister = Persister(writer, letters, FAST)
    values = [encode(trade(1)), b'{"type":"trade","exchange":', encode(trade(2, "NaN")), None, encode(trade(3))]
    await persister.persist(RowDecoder(Trade), "market.trades", values)
    assert sorted(writer.rows) == ["1", "3"]
    reasons = [letter.reason for letter in letters.sent]
    assert reasons[0] == "not a Trade: Input data was truncated"
    assert reasons[1] == "trade field price is NaN"
    assert reasons[2].startswith("not a Trade")
    assert letters.sent[1].raw == encode(trade(2, "NaN")).decode()
    assert [letter.exchange for letter in letters.sent] == ["sink", "binance", "sink"]


async def test_a_record_of_another_type_is_a_dead_letter_not_a_crash():
    writer, letters = MemoryWriter(), Letters()
    persister = Persister(writer, letters, FAST)
    value = encode(IndicatorValue("binance", "BTCUSDT", "1m", "rsi_14", TS, {"rsi": Decimal("50")}))
    await persister.persist(RowDecoder(Trade), "market.trades", [value])
    assert not writer.rows
    assert letters.sent[0].reason == "not a Trade: Invalid value 'indicator' - at `$.type`"


async def test_an_unavailable_database_is_retried_until_it_is_back():
    writer, letters = MemoryWriter(), Letters()
    writer.unavailable_for = 5
    persister = Persister(writer, letters, FAST)
    before = metrics.RETRIES.labels("t.market.trades")._value.get()
    await persister.persist(RowDecoder(Trade), "t.market.trades", [encode(trade(n)) for n in range(10)])
    assert len(writer.rows) == 10 and writer.transactions == 6 and not letters.sent
    assert metrics.RETRIES.labels("t.market.trades")._value.get() - before == 5
    assert writer.starts == 1  # started once, lazily, on the first write


async def test_rows_the_database_refuses_are_found_by_splitting_and_dead_lettered():
    writer, letters = MemoryWriter(), Letters()
    writer.poisoned = {"13", "60"}
    persister = Persister(writer, letters, FAST)
    await persister.persist(RowDecoder(Trade), "market.trades", [encode(trade(n)) for n in range(64)])
    assert sorted(writer.rows, key=int) == [str(n) for n in range(64) if n not in (13, 60)]
    assert [letter.raw for letter in letters.sent] == [encode(trade(13)).decode(), encode(trade(60)).decode()]
    assert all("refused by the database" in letter.reason for letter in letters.sent)
    assert writer.transactions < 30  # a binary search, not one transaction per row


def wrapped_error(code: str | None) -> StorageError:
    cause = asyncpg.PostgresError("x")
    cause.sqlstate = code  # type: ignore[attr-defined]
    error = StorageError("writing a batch")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("code", ["08006", "57P01", "53300", "40001", "42P01", None])
def test_errors_that_are_not_about_the_data_are_retried(code):
    assert not is_data_error(wrapped_error(code))
    assert not is_data_error(ConnectionResetError())


@pytest.mark.parametrize("code", ["22003", "22021", "23505", "23514", "21000"])
def test_data_errors_are_recognized_through_the_wrapper(code):
    assert is_data_error(wrapped_error(code))


@pytest.mark.parametrize("cause", [OverflowError("int too big to convert"), asyncpg.DataError("invalid input")])
def test_values_the_client_cannot_encode_are_data_errors(cause):
    error = StorageError("writing a batch")
    error.__cause__ = cause
    assert is_data_error(error)


async def test_maintenance_runs_at_once_then_periodically_and_survives_failures():
    class Maintained(MemoryWriter):
        def __init__(self) -> None:
            super().__init__()
            self.maintained = 0

        async def maintain(self) -> None:
            self.maintained += 1
            if self.maintained == 2:
                raise StorageUnavailable("the database is unavailable; retry later")

    writer = Maintained()
    task = asyncio.create_task(Persister(writer, Letters(), FAST).maintain_every(0.01))
    deadline = time.monotonic() + 5
    while writer.maintained < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    assert not task.done()  # the failed second run did not end it
    task.cancel()

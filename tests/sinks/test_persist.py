"""The row decoder and the persister with an in-memory writer: batch records decoded whole or event by event,
dead letters, retries with backoff, refused rows found by splitting the batch. (The same code against the real
PostgreSQL: test_sink_service.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal

import asyncpg
import pytest

from market_ingestor.bus.records import batch_value
from market_ingestor.errors import StorageError, StorageUnavailable
from market_ingestor.model import DeadLetter, IndicatorValue, Trade, encode
from market_ingestor.retry import RetryPolicy
from market_ingestor.sinks import metrics
from market_ingestor.sinks.connect import storage_errors
from market_ingestor.sinks.persist import Decoded, Persister, Row, RowDecoder, is_data_error, is_outage

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


FAST = RetryPolicy(initial_s=0.001, max_s=0.004)


def records(*values: bytes | None, row_type: type[Row] = Trade) -> list[Decoded]:
    decoder = RowDecoder(row_type)
    return [decoder.decode(value, TS) for value in values]


def batch(*numbers: int) -> bytes:
    """One batch record of these trades, as the publishers write it."""
    return batch_value(encode(trade(n)) for n in numbers)


def test_a_batch_record_decodes_into_all_its_rows_in_order():
    decoded = RowDecoder(Trade).decode(batch(1, 2, 3), TS)
    assert decoded.rows == [trade(1), trade(2), trade(3)] and not decoded.dead
    assert len(decoded) == 3
    single = RowDecoder(Trade).decode(encode(trade(4)), TS)  # a record of one object: a batch of one
    assert single.rows == [trade(4)] and len(single) == 1


async def test_bad_events_of_a_record_become_dead_letters_and_its_good_events_are_written():
    writer, letters = MemoryWriter(), Letters()
    persister = Persister(writer, letters, FAST)
    truncated = b'{"type":"trade","exchange":'
    value = (
        b"[" + b",".join([encode(trade(1)), b'{"type":"trade","exchange":"binance"}', encode(trade(2, "NaN"))]) + b"]"
    )
    await persister.persist("market_trades", "market.trades", records(value, batch(3, 4), truncated, None))
    assert sorted(writer.rows) == ["1", "3", "4"]
    reasons = [letter.reason for letter in letters.sent]
    assert reasons[0] == "not a trade: Object missing required field `symbol`"
    assert reasons[1] == "trade 2: price NaN is not a positive number"  # the trade rule, validity.py
    assert reasons[2] == "not JSON: Input data was truncated"
    assert reasons[3].startswith("not JSON: ")
    assert [letter.raw for letter in letters.sent[:3]] == [
        '{"type":"trade","exchange":"binance"}',
        encode(trade(2, "NaN")).decode(),
        truncated.decode(),
    ]
    assert [letter.exchange for letter in letters.sent] == ["sink", "binance", "sink", "sink"]


async def test_a_record_of_another_type_is_a_dead_letter_not_a_crash():
    writer, letters = MemoryWriter(), Letters()
    persister = Persister(writer, letters, FAST)
    value = encode(IndicatorValue("binance", "BTCUSDT", "1m", "rsi_14", TS, {"rsi": Decimal("50")}))
    await persister.persist("market_trades", "market.trades", records(b"[" + value + b"]"))
    assert not writer.rows
    assert letters.sent[0].reason == "not a trade: Invalid value 'indicator' - at `$.type`"


async def test_an_unavailable_database_is_retried_until_it_is_back():
    writer, letters = MemoryWriter(), Letters()
    writer.unavailable_for = 5
    persister = Persister(writer, letters, FAST)
    before = metrics.RETRIES.labels("t.market.trades")._value.get()
    await persister.persist("market_trades", "t.market.trades", records(batch(*range(6)), batch(*range(6, 10))))
    assert len(writer.rows) == 10 and writer.transactions == 6 and not letters.sent
    assert metrics.RETRIES.labels("t.market.trades")._value.get() - before == 5
    assert writer.starts == 1  # started once, lazily, on the first write


async def test_rows_the_database_refuses_are_found_by_splitting_and_dead_lettered():
    writer, letters = MemoryWriter(), Letters()
    writer.poisoned = {"13", "60"}
    persister = Persister(writer, letters, FAST)
    await persister.persist(
        "market_trades", "market.trades", records(*(batch(*range(n, n + 8)) for n in range(0, 64, 8)))
    )
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


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (StorageUnavailable("writing a batch: the database is unavailable"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (wrapped_error("57P01"), True),  # its cause: the server is shutting down
        (TypeError("unsupported operand"), False),
        (wrapped_error("42P01"), False),  # undefined table: run the migrations
        (StorageError("the database has no market-ingestor schema"), False),
    ],
)
def test_only_an_outage_is_one(error, outage):
    assert is_outage(error) is outage


def test_a_bug_raised_while_handling_an_outage_is_not_an_outage():
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise TypeError("a bug in the handler")  # noqa: B904 - the point: only its context is an outage
    except TypeError as error:
        assert isinstance(error.__context__, ConnectionResetError)
        assert not is_outage(error)


class FaultyWriter(MemoryWriter):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def write(self, events: Sequence[Row]) -> None:
        self.transactions += 1
        raise self.error


@pytest.mark.parametrize("error", [TypeError("unsupported operand"), wrapped_error("42P01")])
async def test_a_fault_that_is_not_an_outage_is_raised_at_once_not_retried(error):
    writer, letters = FaultyWriter(error), Letters()
    persister = Persister(writer, letters, FAST)
    before = metrics.RETRIES.labels("t.market.trades")._value.get()
    with pytest.raises(type(error)):
        await persister.persist("market_trades", "t.market.trades", records(batch(1, 2)))
    assert writer.transactions == 1 and not letters.sent
    assert metrics.RETRIES.labels("t.market.trades")._value.get() == before
    assert persister.database_state() == {"database": "ok"}


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    ],
)
def test_a_connection_broken_under_an_operation_is_an_outage_raw_or_wrapped(error):
    assert is_outage(error)
    with pytest.raises(StorageUnavailable), storage_errors("writing a batch"):
        raise error

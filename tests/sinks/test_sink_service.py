"""``market-ingestor sink`` as a process, on the dev stack's Kafka and PostgreSQL, each test with its own database
and topic prefix, fed batch records by the bus publisher: 200,000 trades (and their klines) survive database
connections killed mid-stream and a SIGKILL of the sink, stored exactly once; SIGTERM flushes and commits the last
partial batch and exits 0; bad events go to the dead-letter topic while the good events of their records are
stored; records of aborted Kafka transactions are never stored; a second sink joining the group mid-stream (a
rebalance) loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from decimal import Decimal

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from sink_helpers import (
    COUNT,
    KLINE_SQL,
    T0,
    TERMINATE,
    Kline,
    Stack,
    assert_trades_stored_once,
    at_least,
    database,
    database_name,
    db,
    kline_row,
    make_trades,
    sinks,
    start_sink,
    trade_count,
    until,
    with_klines,
)

from db_helpers import with_database
from market_ingestor.bus import open_bus
from market_ingestor.bus.keys import bus_key
from market_ingestor.bus.records import batch_value
from market_ingestor.bus.topics import Topics
from market_ingestor.model import DeadLetter, Trade, decode, encode
from metrics_helpers import answering, free_port, scrape

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
__all__ = ["database", "db", "sinks"]  # fixtures


# --- tests --------------------------------------------------------------------------------------------------------


async def test_database_connections_killed_mid_stream_lose_and_duplicate_nothing(
    dev_stack, database, db, tmp_path, sinks
):
    trades = make_trades(COUNT, seed=5)
    events, final_klines = with_klines(trades)
    assert any(k.revision > 0 for k in final_klines.values())  # the stream does correct closed klines
    assert sum(isinstance(e, Kline) and not e.closed for e in events) > 100  # and sends in-progress ones
    stack = Stack(dev_stack, database, tmp_path)
    await stack.ensure_topics()
    sink = await start_sink(stack, sinks)
    publishing = asyncio.create_task(stack.publish(events))
    await until(lambda: at_least(db, 30_000), sink, "30,000 trades")
    # Mid-stream: kill every connection of the sink to its database, again and again for a few seconds.
    killed = 0
    stop_killing = time.monotonic() + 3
    while time.monotonic() < stop_killing:
        killed += sum(1 for row in await db.fetch(TERMINATE, database_name(database)) if row[0])
        await asyncio.sleep(0.05)
    assert killed > 0
    assert await trade_count(db) < COUNT, "the sink finished before the database went away: not mid-stream"
    await publishing

    await until(lambda: at_least(db, COUNT), sink, f"{COUNT} trades")
    want = sorted(kline_row(k) for k in final_klines.values())

    async def klines_final() -> bool:
        return sorted(tuple(row) for row in await db.fetch(KLINE_SQL)) == want

    await until(klines_final, sink, "the final closed klines")
    assert await sink.stop() == 0, sink.log()[-3000:]
    await assert_trades_stored_once(db, trades)
    assert '"database write failed, retrying"' in sink.log()  # the kills hit writes, which were retried


async def test_a_sigkilled_sink_restarts_where_its_commits_say_and_stores_each_trade_once(
    dev_stack, database, db, tmp_path, sinks
):
    trades = make_trades(COUNT, seed=7)
    stack = Stack(dev_stack, database, tmp_path)
    await stack.ensure_topics()
    await stack.publish(trades)
    sink = await start_sink(stack, sinks)
    await until(lambda: at_least(db, 30_000), sink, "30,000 trades")
    assert await sink.stop(signal.SIGKILL) == -signal.SIGKILL
    stored = {row[0] for row in await db.fetch("SELECT trade_id FROM market_trades")}
    assert len(stored) < COUNT, "the sink finished before it was killed: not mid-stream"
    # Offsets are committed only after their transaction: whatever the commits cover is in the database.
    committed = await stack.committed_trade_ids()
    assert committed and committed <= stored

    sink = await start_sink(stack, sinks)
    await until(lambda: at_least(db, COUNT), sink, f"{COUNT} trades after the restart")
    assert await sink.stop() == 0, sink.log()[-3000:]
    await assert_trades_stored_once(db, trades)


async def test_sigterm_writes_and_commits_the_partial_batch_then_exits_0(dev_stack, database, db, tmp_path, sinks):
    trades = make_trades(30_500, seed=11)
    # Batches are written when full or after a minute: a partial batch in the database came from the shutdown.
    stack = Stack(dev_stack, database, tmp_path)
    stack.configure(batch_size=1000, flush_interval_s=3600.0)
    await stack.ensure_topics()
    await stack.publish(trades)
    sink = await start_sink(stack, sinks)
    await until(lambda: at_least(db, 10_000), sink, "10,000 trades")
    assert await sink.stop(signal.SIGTERM) == 0, sink.log()[-3000:]
    stored = {row[0] for row in await db.fetch("SELECT trade_id FROM market_trades")}
    assert len(stored) % 1000, f"{len(stored)} trades: the buffered partial batch was not written at shutdown"
    # Flushed and committed: everything written is committed, everything committed is written.
    assert await stack.committed_trade_ids() == stored
    assert '"sink flushed"' in sink.log()

    stack.configure()  # the usual flush interval for the rest
    sink = await start_sink(stack, sinks)
    await until(lambda: at_least(db, len(trades)), sink, "all trades after the restart")
    assert await sink.stop() == 0
    await assert_trades_stored_once(db, trades)


async def test_a_database_that_stays_down_holds_the_stream_and_sigterm_still_exits_0(
    dev_stack, database, tmp_path, sinks
):
    trades = make_trades(20_000, seed=19)
    stack = Stack(dev_stack, database, tmp_path)
    stack.configure(shutdown_timeout_s=2.0, retry_max_s=0.2)
    await stack.ensure_topics()
    await stack.publish(trades)
    name = database_name(database)
    admin = await asyncpg.connect(with_database(database, "postgres"))  # the test database's server
    try:
        sink = await start_sink(stack, sinks)
        conn = await asyncpg.connect(database)
        await until(lambda: at_least(conn, 5_000), sink, "5,000 trades")
        await conn.close()
        # The database goes away and stays away: no connection is accepted.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(TERMINATE, name)

        async def retrying() -> bool:
            return sink.log().count('"database write failed, retrying"') >= 3

        await until(retrying, sink, "write retries")
        started = time.monotonic()
        assert await sink.stop(signal.SIGTERM) == 0, sink.log()[-3000:]
        assert time.monotonic() - started < 20  # the shutdown timeout, not the outage, bounds the exit
        assert '"shutdown: buffered records could not be written in time' in sink.log()
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()

    db = await asyncpg.connect(database)
    try:
        stored = {row[0] for row in await db.fetch("SELECT trade_id FROM market_trades")}
        assert len(stored) < len(trades)
        assert await stack.committed_trade_ids() <= stored  # what was held was not committed
        stack.configure()
        sink = await start_sink(stack, sinks)
        await until(lambda: at_least(db, len(trades)), sink, "all trades once the database is back")
        assert await sink.stop() == 0
        await assert_trades_stored_once(db, trades)
    finally:
        await db.close()


async def test_bad_records_go_to_the_dead_letter_topic_and_aborted_transactions_are_never_stored(
    dev_stack, database, db, tmp_path, sinks
):
    if not dev_stack.supports_transactions:
        pytest.skip(f"{dev_stack.kafka_kind} has no Kafka transactions")
    stack = Stack(dev_stack, database, tmp_path)
    await stack.ensure_topics()
    good = make_trades(1000, seed=13)
    nul = Trade("binance", "AAAUSDT", "bad\x00id", Decimal("1"), Decimal("1"), "buy", T0, T0)  # text cannot hold NUL
    nan = Trade("binance", "AAAUSDT", "nan", Decimal("NaN"), Decimal("1"), "buy", T0, T0)
    missing = b'{"type":"trade","exchange":"binance","symbol":"AAAUSDT"}'  # an event of a record that is not a trade
    publisher = open_bus(stack.bus_config).publisher()
    await publisher.start()
    for event in [*good[:500], nul, nan, missing, *good[500:]]:
        key, value = ("binance.AAAUSDT", event) if isinstance(event, bytes) else (bus_key(event), encode(event))
        await publisher.publish(stack.topic(Topics.TRADES), key, value)
    await publisher.stop()
    # A transactional producer (an exactly-once worker that crashed) writes batch records of trades and aborts.
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, transactional_id=f"{stack.app_id}-tx")
    await producer.start()
    try:
        await producer.begin_transaction()
        for n in range(0, 50, 10):
            aborted = [Trade("binance", "BBBUSDT", f"aborted-{m}", Decimal("1"), Decimal("1"), "buy", T0, T0)
                       for m in range(n, n + 10)]  # fmt: skip
            value = batch_value(encode(trade) for trade in aborted)
            await producer.send(stack.topic(Topics.TRADES), value, key=bus_key(aborted[0]).encode())
        await producer.abort_transaction()
    finally:
        await producer.stop()
    after = Trade("binance", "BBBUSDT", "after", Decimal("2"), Decimal("1"), "sell", T0, T0)
    await stack.publish([after])
    publisher = open_bus(stack.bus_config).publisher()
    await publisher.start()
    await publisher.publish(stack.topic(Topics.TRADES), "binance.AAAUSDT", b"{not json")  # the record: [{not json]
    await publisher.stop()

    sink = await start_sink(stack, sinks)
    await until(lambda: at_least(db, len(good) + 1), sink, "the good trades")
    follower = open_bus(stack.bus_config).follower([stack.topic(Topics.DEADLETTER)])
    await follower.start()
    letters: list[DeadLetter] = []
    try:

        async def four_letters() -> bool:
            for delivery in await follower.fetch(100, 0.2):
                letter = decode(delivery.value)
                assert isinstance(letter, DeadLetter)
                letters.append(letter)
            return len(letters) >= 4

        await until(four_letters, sink, "four dead letters")
    finally:
        await follower.stop()
    assert await sink.stop() == 0
    reasons = {letter.raw: letter.reason for letter in letters}
    assert "refused by the database" in reasons[encode(nul).decode()]
    assert reasons[encode(nan).decode()] == "trade nan: price NaN is not a positive number"  # the trade rule
    assert reasons[missing.decode()] == "not a trade: Object missing required field `trade_id`"
    assert reasons["[{not json]"].startswith("not JSON: ")
    assert len(letters) == 4
    stored = {row[0] for row in await db.fetch("SELECT trade_id FROM market_trades")}
    assert stored == {t.trade_id for t in good} | {"after"}  # none of the aborted ones, nothing bad


async def test_a_second_sink_joining_mid_stream_takes_partitions_and_nothing_is_lost_or_doubled(
    dev_stack, database, db, tmp_path, sinks, monkeypatch
):
    trades = make_trades(COUNT, seed=23)
    half = COUNT // 2
    stack = Stack(dev_stack, database, tmp_path)
    await stack.ensure_topics()
    await stack.publish(trades[:half])
    first = await start_sink(stack, sinks)
    await until(lambda: at_least(db, 20_000), first, "20,000 trades")
    port = free_port()
    monkeypatch.setenv("MARKET_INGESTOR__SINK__METRICS_PORT", str(port))
    second = await start_sink(stack, sinks)  # the group rebalances: the first sink gives up partitions
    # The rest comes once both members hold partitions, so each of them has trades of its own to store.
    await until(lambda: members_with_partitions(stack, 2), second, "a group of two sinks with partitions")
    await stack.publish(trades[half:])

    async def second_stores() -> bool:
        return await answering(port) and (await scrape(port)).value("db_insert_total", table="market_trades") > 0

    await until(second_stores, second, "the second sink storing trades of its partitions")
    # The first one leaves (another rebalance): it writes and commits what it holds; the second takes the rest.
    assert await first.stop(signal.SIGTERM) == 0, first.log()[-3000:]
    await until(lambda: at_least(db, COUNT), second, f"{COUNT} trades")
    assert await second.stop(signal.SIGTERM) == 0, second.log()[-3000:]
    await assert_trades_stored_once(db, trades)
    assert await stack.committed_trade_ids() == {trade.trade_id for trade in trades}


async def members_with_partitions(stack: Stack, count: int) -> bool:
    """Whether the sink group has ``count`` members, each assigned at least one partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([stack.group])
    finally:
        await admin.close()
    _error, _group, state, _kind, _protocol, members = response.groups[0]
    if state != "Stable" or len(members) != count:
        return False
    assignments = [ConsumerProtocolMemberAssignment.decode(member[4]) for member in members]
    return all(any(partitions for _, partitions in a.assignment) for a in assignments)

"""``market-ingestor sink`` on NATS JetStream (bus.kind = "nats"): the same batches and writer fed by the bus
adapter's durable consumer; messages are acknowledged only after their transaction, so a SIGKILL loses nothing
and the restart stores nothing twice; SIGTERM flushes and exits 0."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import nats
import pytest
from sink_helpers import (
    Stack,
    assert_trades_stored_once,
    at_least,
    database,
    db,
    make_trades,
    sinks,
    start_sink,
    until,
)

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.nats import stream_name
from market_ingestor.bus.topics import Topics
from market_ingestor.model import DeadLetter, decode

pytestmark = [pytest.mark.nats, pytest.mark.postgres]
__all__ = ["database", "db", "sinks"]  # fixtures

COUNT = 50_000


@pytest.fixture
async def nats_stack(dev_stack, database, tmp_path) -> AsyncIterator[Stack]:
    stack = Stack(dev_stack, database, tmp_path, kind="nats")
    await stack.ensure_topics()
    yield stack
    client = await nats.connect(dev_stack.nats_url)
    try:
        js = client.jetstream()
        for spec in PIPELINE_TOPICS:
            await js.delete_stream(stream_name(stack.topic(spec.name)))
    finally:
        await client.close()


async def test_the_nats_sink_survives_a_sigkill_and_flushes_on_sigterm(nats_stack, db, sinks):
    stack = nats_stack
    trades = make_trades(COUNT, seed=17)
    await stack.publish(trades)
    publisher = open_bus(stack.bus_config).publisher()
    await publisher.start()
    await publisher.publish(stack.topic(Topics.TRADES), "binance.AAAUSDT", b"{not json", "garbage-1")
    await publisher.stop()

    sink = await start_sink(stack, sinks)
    await until(lambda: at_least(db, 10_000), sink, "10,000 trades")
    assert await sink.stop(signal.SIGKILL) == -signal.SIGKILL
    assert not await at_least(db, COUNT), "the sink finished before it was killed: not mid-stream"

    sink = await start_sink(stack, sinks)
    await until(lambda: at_least(db, COUNT), sink, f"{COUNT} trades after the restart")
    follower = open_bus(stack.bus_config).follower([stack.topic(Topics.DEADLETTER)])
    await follower.start()
    letters: list[DeadLetter] = []

    async def a_letter() -> bool:
        letters.extend(d for d in map(decode, (m.value for m in await follower.fetch(10, 0.2))))  # type: ignore[misc]
        return bool(letters)

    try:
        await until(a_letter, sink, "the dead letter")
    finally:
        await follower.stop()
    assert await sink.stop(signal.SIGTERM) == 0, sink.log()[-3000:]
    assert '"sink flushed"' in sink.log()
    await assert_trades_stored_once(db, trades)
    # The publisher made it a batch record of one event, "[{not json]": not JSON at all, one dead letter.
    assert [(letter.raw, letter.reason[:10]) for letter in letters] == [("[{not json]", "not JSON: ")]

"""The simulator's journal: its line format, and that it records exactly what a client received, per session,
with how each session ended."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_simulator import recv_text, subscribe, toy_sim, until
from websockets.asyncio.client import connect

from market_ingestor.simulator.journal import (
    JournalEvent,
    JournalTrade,
    SessionEnd,
    format_record,
    parse_record,
    read_journal,
)


@pytest.mark.parametrize(
    "record",
    [
        JournalTrade(12.5, "binance", "binance-3", "BTCUSDT", "1042", "61234.50", "0.00100", "sell", 1_700_000_000_123),
        JournalEvent("E", 1.000001, "okx", "okx-1", "dropped"),
        JournalEvent("O", 0.0, "okx", "okx-2", ""),
        JournalEvent("M", 3.25, "kraken", "kraken-1", "wrong_types"),
    ],
)
def test_a_record_reads_back_as_written(record):
    line = format_record(record)
    assert line.endswith("\n") and line.count("\n") == 1
    assert parse_record(line) == record


def test_a_line_cut_short_by_a_kill_is_skipped_and_garbage_is_refused(tmp_path: Path):
    path = tmp_path / "journal"
    whole = format_record(JournalEvent("O", 1.0, "okx", "okx-1", ""))
    path.write_text(whole + "T\t2.0\tokx\tokx-1\tBTC")
    assert list(read_journal(path)) == [parse_record(whole)]
    with pytest.raises(ValueError, match="not a journal line"):
        parse_record("X\t1\n")


async def test_the_journal_holds_every_trade_a_client_received_and_how_each_session_ended(tmp_path: Path):
    path = tmp_path / "sent.journal"
    received: dict[str, tuple[str, str, str, int]] = {}
    async with toy_sim(journal=path) as sim:
        async with connect(sim.ws_url("toy")) as ws:  # closed normally
            await subscribe(ws, "trades:BTC-USDT")
            sim.inject_malformed("toy", count=3)
            malformed = 0
            while len(received) < 300 or malformed < 3:
                try:
                    frame = json.loads(await recv_text(ws))
                except ValueError:
                    malformed += 1
                    continue
                if frame.get("ch") != "trades":
                    continue
                if not all(isinstance(row["id"], int) for row in frame["data"]):
                    malformed += 1
                    continue
                received |= {str(row["id"]): (row["p"], row["q"], row["side"], row["ts"]) for row in frame["data"]}
        async with connect(sim.ws_url("toy")) as ws:
            await subscribe(ws, "trades:BTC-USDT")
            await until(ws, {"ch": "trades"})
            await sim.drop_connections("toy")
        ws = await connect(sim.ws_url("toy"))
        await subscribe(ws, "trades:BTC-USDT")
        await until(ws, {"ch": "trades"})
        ws.transport.abort()  # the client dies: no close frame
        await sim.wait_stats("toy", lambda s: s.sessions_current == 0)
    records = list(read_journal(path))
    trades = [r for r in records if isinstance(r, JournalTrade)]
    events = [(r.kind, r.session, r.detail) for r in records if isinstance(r, JournalEvent) and r.kind != "M"]
    assert events == [
        ("O", "toy-1", ""),
        ("E", "toy-1", SessionEnd.CLIENT_CLOSED),
        ("O", "toy-2", ""),
        ("E", "toy-2", SessionEnd.DROPPED),
        ("O", "toy-3", ""),
        ("E", "toy-3", SessionEnd.CLIENT_GONE),
    ]
    first = {t.trade_id: (t.price, t.qty, t.side, t.ts_ns) for t in trades if t.session == "toy-1"}
    # Every one received, with the exact text, the side and the time sent.
    assert {trade_id: first[trade_id] for trade_id in received} == received
    assert all(t.symbol == "BTCUSDT" and t.exchange == "toy" for t in trades)
    assert len({(t.session, t.trade_id) for t in trades}) == len(trades)  # once per session
    assert sum(1 for r in records if isinstance(r, JournalEvent) and r.kind == "M") == sim.stats("toy").malformed_sent
    times = [r.t for r in records]
    assert times == sorted(times)

"""Simulator throughput: trades/s and frames/s it sustains to one client, per exchange dialect.

    .venv/bin/python bench/simulator.py [--exchange NAME ...] [--rate 50000 100000 200000] [--seconds 5]

The simulator runs here with one symbol (BTCUSDT) at each requested rate; the client is another process that
subscribes to its trades and reads raw bytes as fast as the socket gives them (no WebSocket parsing), so the
number measured is the simulator's: market steps, rendering in the exchange's wire format, fan-out and sends.
Trades and frames are the simulator's own counters over the measured window; "achieved" below the requested
rate means the simulator is saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator import DIALECTS, Simulator, SimulatorConfig

# Each exchange's documented subscribe frame for BTC/USDT trades.
SUBSCRIBE = {
    "binance": '{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}',
    "okx": '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}',
    "bybit": '{"op":"subscribe","args":["publicTrade.BTCUSDT"]}',
    "coinbase": '{"type":"subscribe","product_ids":["BTC-USDT"],"channels":["matches"]}',
    "kraken": '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USDT"]}}',
}


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x81, 0x80 | length]) if length < 126 else bytes([0x81, 0x80 | 126]) + struct.pack("!H", length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def drain(url: str, subscribe: str, seconds: float) -> None:
    host_port, _, path = url.removeprefix("ws://").partition("/")
    host, _, port = host_port.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    writer.write(masked_text_frame(subscribe))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and await reader.read(1 << 20):
        pass
    writer.close()


def client(url: str, subscribe: str, seconds: float) -> None:
    asyncio.run(drain(url, subscribe, seconds))


async def measure(exchange: str, rate: float, seconds: float) -> tuple[float, float, float]:
    config = SimulatorConfig(
        port=0, exchanges=(exchange,), symbols=("BTCUSDT",), trades_per_s=rate, session_queue_frames=1_000_000
    )
    async with Simulator(config) as sim:
        warmup_s = 1.0
        reader = multiprocessing.get_context("spawn").Process(
            target=client, args=(sim.ws_url(exchange), SUBSCRIBE[exchange], seconds + warmup_s + 2)
        )
        reader.start()
        try:
            await sim.wait_subscribed(exchange, Channel.TRADES, "BTCUSDT", timeout_s=30)
            await asyncio.sleep(warmup_s)  # a benchmark's measuring window, not synchronization
            before, trades_before, began = sim.stats(exchange), sim.sent_trades(exchange, "BTCUSDT"), time.monotonic()
            await asyncio.sleep(seconds)
            after, trades_after = sim.stats(exchange), sim.sent_trades(exchange, "BTCUSDT")
            elapsed = time.monotonic() - began
            if after.slow_consumers:
                raise SystemExit("the reader fell behind: the result would measure the client, not the simulator")
        finally:
            await asyncio.to_thread(reader.join)  # the client stops by itself; the simulator keeps serving it
    return (
        (trades_after.count - trades_before.count) / elapsed,
        (after.frames_sent - before.frames_sent) / elapsed,
        elapsed,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchange", nargs="*", default=sorted(DIALECTS), choices=sorted(DIALECTS))
    parser.add_argument("--rate", nargs="*", type=float, default=[50_000, 100_000, 200_000, 400_000])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"{'exchange':10} {'requested':>10} {'trades/s':>10} {'frames/s':>10}")
    for exchange in args.exchange:
        for rate in args.rate:
            trades_per_s, frames_per_s, _ = await measure(exchange, rate, args.seconds)
            print(f"{exchange:10} {rate:>10,.0f} {trades_per_s:>10,.0f} {frames_per_s:>10,.0f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

"""Quix Streams peer of the kline worker, for side-by-side benches: trades -> closed 1-minute OHLCV, one process.

    make bench-venv     # Quix Streams 3.28 in .venv-bench (it conflicts with requirements.lock: pydantic)
    .venv-bench/bin/python bench/quix_peer.py --bootstrap 127.0.0.1:19092 --input bench.trades \\
        --output bench.quix-klines --group bench-quix [--state-dir /tmp/quix-state] \\
        [--processing-guarantee at-least-once|exactly-once] [--commit-interval-s 1.0] [--output-partitions 12]
        [--replication-factor 1]

Runs until SIGTERM/SIGINT (Quix Streams then commits and stops). Reads ``--input`` from the earliest offset; each
record is ONE trade as JSON (docs/topics.md: ``type, exchange, symbol, trade_id, price, qty, side, ts, recv_ts``;
price and qty decimal strings, ``ts`` the exchange time in ns), keyed ``{exchange}.{symbol}`` (bench/peer_trades.py
fills such a topic). Windows: tumbling 60 s per record key on event time (``ts``), 1 s grace, ``.final()``: a window
goes out once when the partition's event time passes its end + grace, so each partition's last windows stay open.
The reduce keeps exact decimals as strings in the state (Quix's JSON state store cannot hold ``Decimal``) and does
its arithmetic in ``Decimal``: open = the earliest trade by ``ts`` (the first read among equal ``ts``), close = the
latest (the last read among equal ``ts``), high, low, volume (sum of qty), trade_count. Each closed window goes to
``--output`` keyed like its input as JSON: ``exchange, symbol, open_time`` (ns), ``open, high, low, close, volume``
(decimal strings), ``trade_count``. The group commits every ``--commit-interval-s`` (1 s, as Faust; Quix's default
is 5 s), so committed offsets measure its progress with the same granularity as the worker's.
"""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

from quixstreams import Application
from quixstreams.models import TopicConfig

WINDOW_MS = 60_000
GRACE_MS = 1_000
NS_PER_MS = 1_000_000


def event_time_ms(value: dict[str, Any], headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """The trade's exchange time (ns) in ms, the unit of Quix Streams' windows."""
    return int(value["ts"]) // NS_PER_MS


def initializer(trade: dict[str, Any]) -> dict[str, Any]:
    price, ts = trade["price"], trade["ts"]
    return {
        "open": price, "open_ts": ts, "high": price, "low": price, "close": price, "close_ts": ts,
        "volume": trade["qty"], "trade_count": 1,
    }  # fmt: skip


def reducer(agg: dict[str, Any], trade: dict[str, Any]) -> dict[str, Any]:
    price_text, ts = trade["price"], trade["ts"]
    price = Decimal(price_text)
    if ts < agg["open_ts"]:
        agg["open"], agg["open_ts"] = price_text, ts
    if ts >= agg["close_ts"]:
        agg["close"], agg["close_ts"] = price_text, ts
    if price > Decimal(agg["high"]):
        agg["high"] = price_text
    if price < Decimal(agg["low"]):
        agg["low"] = price_text
    agg["volume"] = str(Decimal(agg["volume"]) + Decimal(trade["qty"]))
    agg["trade_count"] += 1
    return agg


def closed_kline(window: dict[str, Any], key: str, timestamp: int, headers: Any) -> dict[str, Any]:
    exchange, symbol = key.split(".", 1)
    agg = window["value"]
    return {
        "exchange": exchange, "symbol": symbol, "open_time": window["start"] * NS_PER_MS,
        "open": agg["open"], "high": agg["high"], "low": agg["low"], "close": agg["close"],
        "volume": agg["volume"], "trade_count": agg["trade_count"],
    }  # fmt: skip


def build(args: argparse.Namespace) -> Application:
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        commit_interval=args.commit_interval_s,
        processing_guarantee=args.processing_guarantee,
        loglevel="WARNING",
    )
    trades = app.topic(args.input, key_deserializer="str", value_deserializer="json", timestamp_extractor=event_time_ms)
    klines = app.topic(
        args.output,
        key_serializer="str",
        value_serializer="json",
        config=TopicConfig(num_partitions=args.output_partitions, replication_factor=args.replication_factor),
    )
    sdf = app.dataframe(trades)
    sdf = sdf.tumbling_window(duration_ms=WINDOW_MS, grace_ms=GRACE_MS).reduce(reducer, initializer).final()
    sdf = sdf.apply(closed_kline, metadata=True)
    sdf.to_topic(klines)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port")
    parser.add_argument("--input", required=True, help="topic of single-trade JSON records")
    parser.add_argument("--output", required=True, help="topic for the closed 1m klines (created when missing)")
    parser.add_argument("--group", required=True, help="consumer group (also names the state stores)")
    parser.add_argument("--state-dir", default="state", help="RocksDB state directory (default ./state)")
    parser.add_argument("--processing-guarantee", choices=("at-least-once", "exactly-once"), default="at-least-once")
    parser.add_argument("--commit-interval-s", type=float, default=1.0)
    parser.add_argument("--output-partitions", type=int, default=12, help="when the output topic is created")
    parser.add_argument("--replication-factor", type=int, default=1, help="when the output topic is created")
    args = parser.parse_args()
    build(args).run()


if __name__ == "__main__":
    main()

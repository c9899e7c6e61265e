"""Single-trade records for the bench peers (bench/quix_peer.py), and a standalone run of the Quix Streams peer.

As a module (from the main venv; it needs aiokafka only): ``await prefill(bootstrap, topic, records)`` makes
``topic`` (12 partitions unless told) and writes one record per ``(key, encoded trade JSON)`` of ``records`` in
order, keyed by the bus key ``{exchange}.{symbol}`` (aiokafka's default partitioner: murmur2 of the key, as Kafka's
Java client and our publisher). ``PeerProcess`` runs bench/quix_peer.py in .venv-bench and reads its CPU time and peak
RSS; ``measure_committed`` polls its group's committed offsets; ``reference_klines`` is the plain-Python Decimal
aggregation its closed klines must equal; ``read_klines`` reads them back.

As a script, the peer end to end on the dev stack's Kafka (``make install bench-venv`` first):

    .venv/bin/python bench/peer_trades.py [--count 100000] [--instruments 100] [--span-minutes 240]
        [--processing-guarantee at-least-once|exactly-once] [--max-seconds 120] [--keep]

fills ``bench-peer-<id>.trades`` with the trades of bench/klines.py (same generator: five exchanges, random-walk
prices, 5% of trades up to 0.5 s out of order; ``--span-minutes`` of event time, so with the defaults ~4 trades per
instrument and minute, as in bench/klines.py's 1M trades of 1,000 instruments), starts ONE peer process, and
measures it as bench/klines.py measures the worker: its group's committed offsets polled every 0.2 s, trades/s
from the first poll that saw a commit to the poll that saw every trade committed, the peer's CPU time over that
span per trade, its peak RSS (VmHWM). Then it stops the peer and compares every closed kline it wrote with
``reference_klines`` of the same trades (exact Decimal equality of open/high/low/close/volume and trade_count);
the windows it did not close must all be at the end of the span (each partition's last windows stay open).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from child_process import ChildProcess

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "bench" / "quix_peer.py"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
PARTITIONS = 12
MINUTE_NS = 60 * 10**9
GRACE_NS = 10**9  # quix_peer.py's grace


async def prefill(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[str | bytes, bytes]],
    *,
    partitions: int = PARTITIONS,
    replication_factor: int = 1,
) -> int:
    """Creates ``topic`` when missing and writes one record per ``(key, value)``, in order; returns the count.

    Values are sent as given (encoded trade JSON, docs/topics.md). All records are acknowledged (acks=all) before
    it returns."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20, max_request_size=4 << 20
    )
    await producer.start()
    count = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key.encode() if isinstance(key, str) else key))
            count += 1
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


class PeerProcess(ChildProcess):
    """bench/quix_peer.py as its own process (in .venv-bench); stderr goes to a file, shown when it fails."""

    def __init__(self, bootstrap: str, input_topic: str, output_topic: str, group: str, state_dir: Path,
                 *extra: str, python: Path = BENCH_PYTHON) -> None:  # fmt: skip
        if not python.exists():
            raise RuntimeError(f"{python} is missing: run `make bench-venv`")
        self.log = Path(tempfile.gettempdir()) / f"bench-quix-peer-{group}.log"
        self._stderr = self.log.open("wb")
        self.proc = subprocess.Popen(
            [str(python), str(PEER), "--bootstrap", bootstrap, "--input", input_topic, "--output", output_topic,
             "--group", group, "--state-dir", str(state_dir), *extra],
            stdout=subprocess.DEVNULL, stderr=self._stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.spawned = time.perf_counter()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the Quix peer exited with {self.proc.returncode}: {self.tail()}")

    def stop(self) -> int:
        return self.terminate()


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic``; 0 until it has committed."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        return 0
    return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == topic)


@dataclass
class Measured:
    committed: int
    complete: bool
    span_s: float
    trades_per_s: float
    cpu_pct: float
    cpu_us_per_trade: float
    peak_rss_mb: float


async def measure_committed(peer: PeerProcess, bootstrap: str, group: str, topic: str, total: int,
                            max_seconds: float) -> Measured:  # fmt: skip
    """Polls the group's committed offsets every 0.2 s from its first commit until ``total`` (or ``max_seconds``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.perf_counter() + 120  # start-up, topic checks and group join
        while (first := await committed(admin, group, topic)) == 0:
            peer.check_alive()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the Quix peer committed nothing in 120 s: {peer.tail()}")
            await asyncio.sleep(0.2)
        t0, cpu0 = time.perf_counter(), peer.cpu_s()
        done = first
        while done < total and time.perf_counter() - t0 < max_seconds:
            peer.check_alive()
            await asyncio.sleep(0.2)
            done = await committed(admin, group, topic)
        span, cpu = time.perf_counter() - t0, peer.cpu_s() - cpu0
    finally:
        await admin.close()
    progressed = max(done - first, 1)
    return Measured(done, done >= total, span, (done - first) / span, 100 * cpu / span, 1e6 * cpu / progressed,
                    peer.peak_rss_mb())  # fmt: skip


Window = tuple[str, int]  # (bus key, open_time ns)


def reference_klines(records: Iterable[tuple[str | bytes, bytes]]) -> dict[Window, dict[str, Any]]:
    """Every 1m window of the trades, by plain Python Decimal arithmetic, in read order per key: open = the first
    trade with the smallest ``ts``, close = the last with the largest, high, low, volume, trade_count."""
    out: dict[Window, dict[str, Any]] = {}
    for raw_key, value in records:
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        trade = json.loads(value)
        ts, price, qty = trade["ts"], Decimal(trade["price"]), Decimal(trade["qty"])
        window = (key, ts - ts % MINUTE_NS)
        kline = out.get(window)
        if kline is None:
            out[window] = {"open": price, "open_ts": ts, "high": price, "low": price, "close": price, "close_ts": ts,
                           "volume": qty, "trade_count": 1}  # fmt: skip
            continue
        if ts < kline["open_ts"]:
            kline["open"], kline["open_ts"] = price, ts
        if ts >= kline["close_ts"]:
            kline["close"], kline["close_ts"] = price, ts
        kline["high"], kline["low"] = max(kline["high"], price), min(kline["low"], price)
        kline["volume"] += qty
        kline["trade_count"] += 1
    return out


async def read_klines(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end, decoded."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0:
        raise RuntimeError(f"topic {topic}: error code {described['error_code']}")
    partitions = [TopicPartition(topic, meta["partition"]) for meta in described["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        klines: list[dict[str, Any]] = []
        behind = [tp for tp in partitions if end[tp] > 0]
        while behind:
            for batch in (await consumer.getmany(*behind, timeout_ms=1000)).values():
                klines.extend(json.loads(record.value) for record in batch if record.value is not None)
            behind = [tp for tp in behind if await consumer.position(tp) < end[tp]]
        return klines
    finally:
        await consumer.stop()


def compare(klines: list[dict[str, Any]], reference: dict[Window, dict[str, Any]], span_end_ns: int) -> dict[str, Any]:
    """Closed klines against the reference: equal ones, different ones (the first few shown), duplicates, and the
    reference windows not closed (all of them should be within the last minutes of the span)."""
    fields = ("open", "high", "low", "close", "volume")
    seen: set[Window] = set()
    equal, duplicates, different = 0, 0, []
    for kline in klines:
        window = (f"{kline['exchange']}.{kline['symbol']}", kline["open_time"])
        if window in seen:
            duplicates += 1
            continue
        seen.add(window)
        expected = reference.get(window)
        if (
            expected is not None
            and kline["trade_count"] == expected["trade_count"]
            and all(Decimal(kline[field]) == expected[field] for field in fields)
        ):
            equal += 1
        else:
            different.append((window, kline, expected))
    open_windows = [window for window in reference if window not in seen]
    earliest_open = min((open_time for _, open_time in open_windows), default=span_end_ns)
    return {
        "closed": len(seen),
        "equal": equal,
        "different": len(different),
        "duplicates": duplicates,
        "not closed": len(open_windows),
        "not closed from (min before end)": (span_end_ns - earliest_open) / MINUTE_NS,
        "first differences": different[:3],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from klines import SPAN_END_NS, replay_trades  # the main bench's trades
    from market_ingestor.devstack import ensure_stack

    bootstrap = ensure_stack().kafka_bootstrap
    stem = f"bench-peer-{uuid.uuid4().hex[:6]}"
    trades_topic, klines_topic, group = f"{stem}.trades", f"{stem}.klines", f"{stem}-quix"
    records = list(replay_trades(args.count, args.instruments, args.span_minutes))
    t0 = time.perf_counter()
    total = await prefill(bootstrap, trades_topic, records)
    result: dict[str, Any] = {"trades": total, "prefill s": round(time.perf_counter() - t0, 1)}
    with tempfile.TemporaryDirectory(prefix="bench-quix-state-") as state_dir:
        peer = PeerProcess(bootstrap, trades_topic, klines_topic, group, Path(state_dir),
                           "--processing-guarantee", args.processing_guarantee)  # fmt: skip
        try:
            measured = await measure_committed(peer, bootstrap, group, trades_topic, total, args.max_seconds)
        finally:
            result["exit"] = peer.stop()
            result["total s"] = round(time.perf_counter() - peer.spawned, 1)
    result.update({name: round(value, 1) if isinstance(value, float) else value
                   for name, value in vars(measured).items()})  # fmt: skip
    result.update(compare(await read_klines(bootstrap, klines_topic), reference_klines(records), SPAN_END_NS))
    if not args.keep:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            # ours and the peer's changelog topics (changelog__{group}--...)
            await admin.delete_topics([name for name in await admin.list_topics() if stem in name])
        finally:
            await admin.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--instruments", type=int, default=100)
    parser.add_argument("--span-minutes", type=float, default=240)
    parser.add_argument("--processing-guarantee", choices=("at-least-once", "exactly-once"), default="at-least-once")
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--keep", action="store_true", help="keep the topics")
    args = parser.parse_args()
    for name, value in asyncio.run(run(args)).items():
        print(f"{name:>34}: {value}")


if __name__ == "__main__":
    main()

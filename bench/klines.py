"""The kline worker on the dev stack's Kafka (Faust) and NATS: trades/s aggregated by ONE worker process, and the
latency from publishing a trade to the kline update that includes it.

    .venv/bin/python bench/klines.py [--phase throughput|latency|both] [--guarantee at_least_once|exactly_once|both]
        [--bus kafka|nats|both]
        [--count 1000000] [--instruments 1000] [--span-minutes 240] [--max-seconds 60] [--rate 10000] [--seconds 20]
        [--streams KEY=TOML ...] [--profile SECONDS] [--worker-cmd CMD] [--prefix PREFIX] [--keep]

Each run starts ONE ``market-ingestor worker`` subprocess on a fresh ``streams.app_id`` (consumer group and
changelog) with 12 partitions, the six default intervals 1m..1d, the default indicators (on the klines it emits;
``--streams "indicators=[]"`` leaves them out), ``standby_replicas = 0``, log level WARNING and any other
``--streams`` settings (e.g. ``--streams batch_size=20000``), and stops it with SIGTERM: "exit" is its exit
code and how long it took to stop (it should be 0); its stderr stays in /tmp/bench-klines-<app_id>.log. Topics are
deleted at the end unless ``--keep``; ``--prefix`` reuses the trades of a kept run. Every throughput run starts
without the prefix's other topics (deleted first): the klines of an earlier run would be read by its indicators.

Throughput (per ``--guarantee``): ``{prefix}market.trades`` is pre-filled with ``--count`` trades of
``--instruments`` instruments (five exchanges, prices on a random walk, 5% of trades up to 0.5 s out of order,
within the grace), their event time spread evenly over ``--span-minutes`` ending two hours after a UTC midnight, so
windows open and close (with the defaults, 1m..4h windows many times and the 1d window at midnight; about 0.3
closed klines per trade, most of them flat 1m ones, as each instrument trades about every 15 s). Every guarantee's
worker reads the same trades from the start. The group's committed offsets on the trades topic are polled every
0.2 s; trades/s = trades committed from the first poll that saw a commit to the last poll, over that time. The last
poll is the one that saw every trade committed or the first ``--max-seconds`` after the first commit ("complete"
says which), so a run stays short however slow the worker is. Faust commits once a second: both ends carry up to
~1 s of commit granularity. "total s" runs from spawning the worker (startup and group join included). Over the
measured span: "cpu %" is the worker's CPU time (100% = one core), "cpu us/trade" the same per trade committed (less
sensitive to other load than trades/s, but it includes the worker's fixed costs per second, e.g. its timer's sweep
over all instruments), "others %" the CPU the rest of the machine used (broker, this process, other work; the
machine has 200%). "rss MB" is the worker's peak resident memory (VmHWM); it grows with the run's length as long
as the RocksDB memtables of its 12 partition stores fill.

Latency (at_least_once): the worker runs with ``update_interval_ms = 1`` (the 250 ms default throttle alone would
make every trade wait up to 250 ms) unless ``--streams`` says otherwise; in-progress klines then go out on every
``timer_interval_s`` tick (default 0.5 s: pass e.g. ``--streams timer_interval_s=0.02``). A listener process reads
``{prefix}market.klines``. Trades trickle (100/s) until the worker's first commit, then come at ``--rate``/s, each
for a random instrument, for at least 3 s and until the worker's committed offsets are within 1.5 s of trades of
the end (at most 15 s more; "caught up" says whether it did), then for ``--seconds`` measured seconds. Measured
trades carry ``ts = recv_ts =`` the wall clock at ``publish()`` and their index as trade id, so a kline's
``last_trade_id`` (the trade with the largest ``ts`` it includes) names the newest measured trade it includes.
A trade's latency is the time from its ``publish()`` to the listener receiving the first 1m kline of its instrument
and minute (in-progress or closed) whose ``last_trade_id`` is that trade or a later one: what a client of
``market.klines`` waits. "unseen" counts measured trades no kline covered before the end; a worker that falls
behind leaves many, and the percentiles are then over the seen ones only. The publisher's 5 ms linger, two broker
hops and the worker's batching (``batch_within_s``) are included; publisher, listener, worker and broker share the
machine's 2 cores. "worker/s" is the worker's committed progress over the measured span; "caught up" says whether
the worker kept up before the span and whether it had committed every trade within 5 s after it.

``--bus nats`` (or ``both``) measures the throughput phase on the dev stack's NATS JetStream too, in the same run:
the same trades pre-filled into ``market.trades`` on NATS (batch messages of one instrument each), one worker with
``bus.kind = "nats"`` and 12 shards (at_least_once: exactly_once is Kafka's); its progress is its per-shard
checkpoints turned into the trades of the messages before them, as the Kafka rows turn committed offsets into
trades.

``--profile S`` records the worker with py-spy (``--nonblocking``: never paused, but some stacks come out cut) for
S seconds of each measured span into /tmp/bench-klines-<guarantee or "latency">.raw (collapsed stacks).
``--worker-cmd`` replaces ``market-ingestor`` by any command taking the same arguments, e.g.
``".venv/bin/python /tmp/variant.py"`` running a patched app, to compare variants.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from child_process import ChildProcess
from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.base import Publisher
from market_ingestor.bus.records import split_events
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import BusConfig, KafkaConfig, NatsConfig
from market_ingestor.devstack import ensure_stack
from market_ingestor.model import Trade, encode

BIN = Path(sys.executable).parent / "market-ingestor"
PYSPY = Path(sys.executable).parent / "py-spy"
GOAL_RATE = 100_000  # trades/s aggregated, one worker
GOAL_P99_MS = 50.0  # at 10,000 trades/s
PARTITIONS = 12
EXCHANGES = ("binance", "okx", "bybit", "coinbase", "kraken")
MINUTE_NS = 60 * 10**9
SPAN_END_NS = 1_704_067_200 * 10**9 + 120 * MINUTE_NS  # 2024-01-01T02:00:00Z


def instruments(count: int) -> list[str]:
    """Bus keys ``{exchange}.{symbol}``."""
    return [f"{EXCHANGES[n % len(EXCHANGES)]}.S{n:04d}USDT" for n in range(count)]


def bus_config(bootstrap: str, prefix: str) -> BusConfig:
    return BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=bootstrap, partitions=PARTITIONS))


def host_busy_s() -> float:
    """CPU seconds all cores of the machine spent busy so far (/proc/stat; idle and iowait excluded)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Worker(ChildProcess):
    """One worker subprocess on its own config; stderr goes to a file, shown when something fails."""

    command: tuple[str, ...] = (str(BIN),)

    def __init__(
        self, tmp: Path, bootstrap: str, prefix: str, guarantee: str, streams: dict[str, str], nats_url: str = ""
    ) -> None:
        self.app_id = f"{prefix.rstrip('.')}-{guarantee.replace('_', '')}-{uuid.uuid4().hex[:4]}"
        settings = {
            "app_id": f'"{self.app_id}"',
            "intervals": '["1m", "5m", "15m", "1h", "4h", "1d"]',
            "processing_guarantee": f'"{guarantee}"',
            "standby_replicas": "0",
            "metrics_port": "0",  # a free port: benches may run beside a worker that holds the default
            **streams,
        }
        config = tmp / f"{self.app_id}.toml"
        kind = "nats" if nats_url else "kafka"
        config.write_text(
            f'[log]\nlevel = "WARNING"\n[bus]\nkind = "{kind}"\ntopic_prefix = "{prefix}"\n'
            f'[bus.kafka]\nbootstrap = "{bootstrap}"\npartitions = {PARTITIONS}\n'
            f'[bus.nats]\nurl = "{nats_url or "nats://127.0.0.1:14222"}"\nworker_shards = {PARTITIONS}\n[streams]\n'
            + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        self.log = Path(tempfile.gettempdir()) / f"bench-klines-{self.app_id}.log"
        self._stderr = self.log.open("wb")
        self.proc = subprocess.Popen(
            [*self.command, "--config", str(config), "worker", "--data-dir", str(tmp / self.app_id)],
            stdout=subprocess.DEVNULL, stderr=self._stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.spawned = time.perf_counter()
        self.exit = "running"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")

    def stop(self) -> str:
        """SIGTERM; returns "code (seconds to stop)" and says why if it was not a clean 0."""
        asked = time.perf_counter()
        code = self.terminate()
        self.exit = f"{code} ({time.perf_counter() - asked:.0f}s)"
        if code != 0:
            last = self.log.read_text(errors="replace").strip().splitlines()
            reason = next((line for line in reversed(last) if "Error" in line or "NotReady" in line), "")
            say(f"worker exited with {code} after SIGTERM ({self.log}): {reason}")
        return self.exit


def profile(pid: int, seconds: float, name: str) -> subprocess.Popen[bytes]:
    path = Path(tempfile.gettempdir()) / f"bench-klines-{name}.raw"
    return subprocess.Popen(
        [str(PYSPY), "record", "--pid", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", str(path),
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def end_profile(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        proc.wait(10)


class TradeCounts:
    """How many trades the records of a topic hold before each offset, per partition (records are batches of
    trades): turns a group's committed offsets into trades. Reads the topic as far as it goes when asked."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.before: dict[int, list[int]] = {p: [0] for p in range(PARTITIONS)}  # offset -> trades before it
        self.started = False

    async def catch_up(self) -> None:
        if not self.started:
            await self.consumer.start()
            self.consumer.assign(self.partitions)
            await self.consumer.seek_to_beginning(*self.partitions)
            self.started = True
        end = await self.consumer.end_offsets(self.partitions)
        while [tp for tp in self.partitions if await self.consumer.position(tp) < end[tp]]:
            for tp, records in (await self.consumer.getmany(timeout_ms=200, max_records=50_000)).items():
                before = self.before[tp.partition]
                for record in records:
                    before.extend([before[-1]] * (record.offset + 1 - len(before)))  # offsets without a record
                    before.append(before[record.offset] + len(split_events(record.value or b"[]")))

    def trades(self, partition: int, offset: int) -> int:
        before = self.before[partition]
        return before[min(max(offset, 0), len(before) - 1)]

    def total(self) -> int:
        return sum(before[-1] for before in self.before.values())

    def records(self) -> int:
        return sum(len(before) - 1 for before in self.before.values())

    async def stop(self) -> None:
        if self.started:
            await self.consumer.stop()


class Offsets:
    """The admin client's view of a group's progress and of topics."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.counts: dict[str, TradeCounts] = {}

    def counts_of(self, topic: str) -> TradeCounts:
        if topic not in self.counts:
            self.counts[topic] = TradeCounts(self.bootstrap, topic)
        return self.counts[topic]

    async def committed(self, group: str, topic: str) -> int:
        """Trades before the group's committed offsets on ``topic``; 0 until the group has a coordinator and
        commits."""
        try:
            offsets = await self.admin.list_consumer_group_offsets(group)
        except KafkaError:
            return 0
        counts = self.counts_of(topic)
        await counts.catch_up()
        return sum(counts.trades(tp.partition, meta.offset) for tp, meta in offsets.items() if tp.topic == topic)

    async def end(self, topic: str) -> int:
        """Trades on ``topic`` now."""
        counts = self.counts_of(topic)
        await counts.catch_up()
        return counts.total()

    async def close(self) -> None:
        for counts in self.counts.values():
            await counts.stop()
        await self.admin.close()

    async def delete(self, stem: str) -> None:
        """Deletes the topics named ``stem...`` (ours: the prefix, the app ids and their changelogs)."""
        topics = [name for name in await self.admin.list_topics() if name.startswith(stem)]
        if topics:
            await self.admin.delete_topics(topics)

    async def delete_outputs(self, prefix: str) -> None:
        """Deletes the topics of ``prefix`` but its trades, and waits until they are gone: a worker reading the
        same trades again (the next guarantee, or a run on ``--prefix``) must not find an earlier run's klines,
        which its indicator agent would read too."""
        keep = prefix + Topics.TRADES
        stale = [name for name in await self.admin.list_topics() if name.startswith(prefix) and name != keep]
        if not stale:
            return
        await self.admin.delete_topics(stale)
        deadline = time.monotonic() + 60
        while set(stale) & set(await self.admin.list_topics()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {stale} still there 60 s after their deletion")
            await asyncio.sleep(0.2)


class NatsProgress:
    """The NATS worker's progress in trades: its per-shard checkpoints (``{app}_progress``: the stream sequence of
    each shard's next message) turned into the trades of that shard's messages before them, as ``Offsets`` turns a
    Kafka group's committed offsets into trades."""

    def __init__(self, url: str, topic: str) -> None:
        self.url, self.topic = url, topic
        self.client: Any = None
        self.before: dict[int, tuple[list[int], list[int]]] = {}  # shard -> (sequences, trades before each)
        self.messages = 0

    async def start(self) -> None:
        import nats

        self.client = await nats.connect(self.url)

    async def count(self) -> int:
        """Reads the whole trades stream once; returns the trades it holds."""
        from nats.js.api import AckPolicy, ConsumerConfig

        from market_ingestor.bus.nats import stream_name
        from market_ingestor.streams.shards import shard_of

        js = self.client.jetstream()
        last = (await js.stream_info(stream_name(self.topic))).state.last_seq
        subscription = await js.pull_subscribe(
            f"{self.topic}.>", stream=stream_name(self.topic), config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        totals: dict[int, int] = defaultdict(int)
        skip, seq = len(self.topic) + 1, 0
        while seq < last:
            for message in await subscription.fetch(batch=100, timeout=10):  # 100 x 256 KB at most
                seq = message.metadata.sequence.stream
                shard = shard_of(message.subject[skip:].encode(), PARTITIONS)
                sequences, before = self.before.setdefault(shard, ([], []))
                sequences.append(seq)
                before.append(totals[shard])
                totals[shard] += len(split_events(message.data))
                self.messages += 1
        await subscription.unsubscribe()
        for shard, (sequences, before) in self.before.items():
            sequences.append(last + 1)
            before.append(totals[shard])
        return sum(totals.values())

    async def committed(self, app_id: str) -> int:
        from market_ingestor.streams.nats_state import bucket_name, read_bucket

        try:
            entries = await read_bucket(self.client.jetstream(), bucket_name(app_id, "progress"))
        except Exception:  # the bucket does not exist before the worker's first checkpoint
            return 0
        done = 0
        for key, entry in entries.items():
            stage, _, shard = key.rpartition(".")
            if stage != "klines" or int(shard) not in self.before:
                continue
            sequences, before = self.before[int(shard)]
            done += before[bisect.bisect_left(sequences, int(entry.value))]
        return done

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def until(condition: Callable[[], Awaitable[bool]], worker: Worker, timeout_s: float, what: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not await condition():
        worker.check_alive()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what} within {timeout_s:.0f}s: {worker.tail()}")
        await asyncio.sleep(0.2)


# --- throughput --------------------------------------------------------------------------------------------------


def replay_trades(
    count: int, instrument_count: int, span_minutes: float, seed: int = 11
) -> Iterator[tuple[str, bytes]]:
    """``count`` trades in event-time order over ``span_minutes`` (see the module docstring): (bus key, encoded)."""
    rng = random.Random(seed)
    keys = instruments(instrument_count)
    cents = [rng.randint(100, 10_000_000) for _ in keys]
    qtys = [Decimal(rng.randint(1, 10**places)).scaleb(-places) for places in (rng.randint(3, 8) for _ in range(997))]
    span_ns = int(span_minutes * MINUTE_NS)
    start, step = SPAN_END_NS - span_ns, span_ns / count
    for n in range(count):
        index = rng.randrange(instrument_count)
        cents[index] = max(1, cents[index] + rng.randint(-20, 20))
        ts = start + int(n * step) - (rng.randrange(500_000_000) if rng.random() < 0.05 else 0)
        exchange, symbol = keys[index].split(".")
        side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
        price = Decimal(cents[index]).scaleb(-2)
        trade = Trade(exchange, symbol, str(n), price, qtys[n % 997], side, ts, ts + rng.randrange(10**6, 10**8))
        yield keys[index], encode(trade)


async def prefill(config: BusConfig, args: argparse.Namespace) -> None:
    bus = open_bus(config)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, config.topic_prefix))
    publisher = bus.publisher()
    await publisher.start()
    try:
        for key, value in replay_trades(args.count, args.instruments, args.span_minutes):
            await publisher.publish(config.topic_prefix + Topics.TRADES, key, value)
    finally:
        await publisher.stop()  # flushes


async def throughput(offsets: Offsets, prefix: str, guarantee: str, total: int, tmp: Path, args: argparse.Namespace,
                     nats: NatsProgress | None = None) -> dict[str, Any]:  # fmt: skip
    worker = Worker(tmp, offsets.bootstrap, prefix, guarantee, args.streams, nats.url if nats else "")
    topic = prefix + Topics.TRADES
    profiler = None

    async def committed() -> int:
        return await (nats.committed(worker.app_id) if nats else offsets.committed(worker.app_id, topic))

    try:
        first = 0

        async def started() -> bool:
            nonlocal first
            first = await committed()
            return first > 0

        await until(started, worker, 120, "no commit")  # startup and group join take ~10 s
        t0, cpu0, host0 = time.perf_counter(), worker.cpu_s(), host_busy_s()
        if args.profile > 0:
            profiler = profile(worker.proc.pid, args.profile, guarantee)
        done = first
        while done < total and time.perf_counter() - t0 < args.max_seconds:
            worker.check_alive()
            await asyncio.sleep(0.2)
            done = await committed()
        span, cpu, rss = time.perf_counter() - t0, worker.cpu_s() - cpu0, worker.peak_rss_mb()
        others = host_busy_s() - host0 - cpu
    finally:
        end_profile(profiler)
        worker.stop()
        await offsets.delete(worker.app_id)
    rate = (done - first) / span
    return {
        "bus": "nats" if nats else "kafka",
        "guarantee": guarantee,
        "committed": done,
        "complete": "yes" if done >= total else "no (cap)",
        "total s": time.perf_counter() - worker.spawned,
        "measured s": span,
        "trades/s": rate,
        "cpu %": 100 * cpu / span,
        "cpu us/trade": 1e6 * cpu / (done - first),
        "others %": 100 * others / span,
        "rss MB": rss,
        "exit": worker.exit,
        "goal": "met" if rate >= GOAL_RATE else "MISSED",
    }


# --- latency -----------------------------------------------------------------------------------------------------


class _Kline1m(msgspec.Struct):
    """What the latency needs of a kline (the decoder skips the other fields)."""

    exchange: str
    symbol: str
    interval: str
    open_time: int
    last_trade_id: str | None


def listen(bootstrap: str, topic: str, ready: Any, stop: Any, out: Any) -> None:
    """In its own process: (receive ns, bus key, open_time, newest trade index) of each 1m kline of measured trades."""

    async def run() -> list[tuple[int, str, int, int]]:
        decoder = msgspec.json.Decoder(list[_Kline1m])
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        seen = []
        try:
            await consumer.getmany(timeout_ms=1000)  # joins and gets its partitions
            ready.set()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=20_000)
                now = time.time_ns()
                for records in batches.values():
                    for record in records:
                        for kline in decoder.decode(record.value):
                            last = kline.last_trade_id
                            if kline.interval == "1m" and last is not None and last.isdigit():  # warm-up: w<n>
                                seen.append((now, f"{kline.exchange}.{kline.symbol}", kline.open_time, int(last)))
        finally:
            await consumer.stop()
        return seen

    out.put(asyncio.run(run()))


class Paced:
    """Publishes trades at a steady rate with ``ts = recv_ts =`` the wall clock; keeps measured publish times."""

    def __init__(self, publisher: Publisher, topic: str, instrument_count: int) -> None:
        self.publisher, self.topic = publisher, topic
        self.keys = instruments(instrument_count)
        self.rng = random.Random(5)
        self.sent = 0
        self.published_ns: list[int] = []  # by measured trade index
        self.key_of: list[str] = []

    async def run(self, rate: int, seconds: float, measured: bool = False,
                  done: Callable[[], Awaitable[bool]] | None = None, most_s: float = 0.0) -> bool:  # fmt: skip
        """At ``rate``/s for ``seconds``, then until ``done()`` (asked twice a second) or ``most_s`` have passed;
        returns whether ``done()`` came true (True without one)."""
        started, base, asked = time.perf_counter(), self.sent, 0.0
        price, qty = Decimal("101.25"), Decimal("0.015")
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                if done is None:
                    return True
                if elapsed - asked >= 0.5:
                    asked = elapsed
                    if await done():
                        return True
                if elapsed >= most_s:
                    return False
            while self.sent < base + int(elapsed * rate):
                key = self.rng.choice(self.keys)
                exchange, symbol = key.split(".")
                now = time.time_ns()
                trade_id = str(len(self.published_ns)) if measured else f"w{self.sent}"
                trade = Trade(exchange, symbol, trade_id, price, qty, "buy" if self.sent & 1 else "sell", now, now)
                await self.publisher.publish(self.topic, key, encode(trade))
                if measured:
                    self.published_ns.append(now)
                    self.key_of.append(key)
                self.sent += 1
            await asyncio.sleep(0.001)

    def waits(self, seen: list[tuple[int, str, int, int]]) -> list[int]:
        """Per measured trade seen in a kline, ns from its publish to the first kline including it, sorted."""
        # Per instrument and 1m window, its trade indexes in publish order (= ts order: ts is the publish time).
        trades_of: dict[tuple[str, int], list[int]] = defaultdict(list)
        for trade, (key, ts) in enumerate(zip(self.key_of, self.published_ns, strict=True)):
            trades_of[key, ts - ts % MINUTE_NS].append(trade)
        covered: dict[tuple[str, int], int] = defaultdict(int)  # how many of those a kline included so far
        waits = []
        for received, key, window, last in sorted(seen):
            trades = trades_of[key, window]
            upto = bisect.bisect_right(trades, last)
            waits += [received - self.published_ns[trade] for trade in trades[covered[key, window] : upto]]
            covered[key, window] = max(covered[key, window], upto)
        return sorted(waits)


def percentile_ms(ordered: list[int], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6 if ordered else float("nan")


async def latency(offsets: Offsets, tmp: Path, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    bus = open_bus(
        BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=offsets.bootstrap, partitions=PARTITIONS))
    )
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    listener = ctx.Process(target=listen, args=(offsets.bootstrap, prefix + Topics.KLINES, ready, stop, out))
    listener.start()
    loop = asyncio.get_running_loop()
    worker = Worker(tmp, offsets.bootstrap, prefix, "at_least_once", {"update_interval_ms": "1", **args.streams})
    publisher = bus.publisher()
    await publisher.start()
    topic = prefix + Topics.TRADES
    paced = Paced(publisher, topic, args.instruments)
    profiler = None
    try:
        if not await loop.run_in_executor(None, ready.wait, 60):
            raise RuntimeError("the kline listener did not start")

        async def has_committed() -> bool:
            worker.check_alive()
            return await offsets.committed(worker.app_id, topic) > 0

        async def caught_up() -> bool:  # Faust commits once a second
            worker.check_alive()
            return paced.sent - await offsets.committed(worker.app_id, topic) < 1.5 * args.rate

        if not await paced.run(100, 0, done=has_committed, most_s=120):  # startup and group join take ~10 s
            raise RuntimeError(f"worker committed nothing in 120 s: {worker.tail()}")
        say(f"latency: worker up, {args.rate:,} trades/s until it keeps up")
        warm = await paced.run(args.rate, 3, done=caught_up, most_s=18)
        say(f"latency: {'kept up' if warm else 'NOT keeping up'}; measuring {args.seconds:g}s")
        if args.profile > 0:
            profiler = profile(worker.proc.pid, min(args.profile, args.seconds), "latency")
        done0, t0 = await offsets.committed(worker.app_id, topic), time.perf_counter()
        cpu0, host0 = worker.cpu_s(), host_busy_s()
        await paced.run(args.rate, args.seconds, measured=True)
        span = time.perf_counter() - t0
        cpu, done = worker.cpu_s() - cpu0, await offsets.committed(worker.app_id, topic)
        others = host_busy_s() - host0 - cpu
        await publisher.flush()
        finished = await paced.run(0, 0, done=caught_up, most_s=5)  # a worker that kept up commits the rest soon
        await asyncio.sleep(2.0)  # and its timer sends the last updates
        stop.set()
        seen = await loop.run_in_executor(None, out.get, True, 60)
        listener.join(30)
    finally:
        stop.set()
        end_profile(profiler)
        worker.stop()
        await publisher.stop()
        if listener.is_alive():
            listener.terminate()
    waits = paced.waits(seen)
    p99 = percentile_ms(waits, 0.99)
    return {
        "sent/s": len(paced.published_ns) / span,
        "worker/s": (done - done0) / span,
        "cpu %": 100 * cpu / span,
        "others %": 100 * others / span,
        "klines": len(seen),
        "p50 ms": percentile_ms(waits, 0.5),
        "p99 ms": p99,
        "unseen": len(paced.published_ns) - len(waits),
        "caught up": ("yes" if warm else "NO") + ("/yes" if finished else "/NO"),
        "exit": worker.exit,
        "goal": "met" if p99 < GOAL_P99_MS and len(waits) == len(paced.published_ns) else "MISSED",
    }


# --- main --------------------------------------------------------------------------------------------------------


def table(title: str, rows: list[dict[str, Any]]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    columns = list(rows[0])
    width = {c: max(len(c), *(len(cell(row[c])) for row in rows)) + 2 for c in columns}
    print(f"\n{title}\n" + "".join(f"{c:>{width[c]}}" for c in columns))
    for row in rows:
        print("".join(f"{cell(row[c]):>{width[c]}}" for c in columns))


async def run_throughput(offsets: Offsets, tmp: Path, args: argparse.Namespace, prefix: str) -> list[dict[str, Any]]:
    topic = prefix + Topics.TRADES
    rows = []
    if args.bus != "nats":
        if not args.prefix:
            started = time.perf_counter()
            await prefill(bus_config(offsets.bootstrap, prefix), args)
            say(f"pre-filled {topic} in {time.perf_counter() - started:.1f}s")
        total = await offsets.end(topic)
        records = offsets.counts_of(topic).records()
        say(f"{total:,} trades on {topic} in {records:,} records ({total / max(records, 1):,.0f} trades per record)")
        for guarantee in ["at_least_once", "exactly_once"] if args.guarantee == "both" else [args.guarantee]:
            await offsets.delete_outputs(prefix)
            rows.append(await throughput(offsets, prefix, guarantee, total, tmp, args))
            say(f"kafka {guarantee}: {rows[-1]['trades/s']:,.0f} trades/s")
    if args.bus != "kafka":
        stack = ensure_stack()
        nats_prefix = f"bkn{uuid.uuid4().hex[:6]}."
        started = time.perf_counter()
        await prefill(BusConfig(kind="nats", topic_prefix=nats_prefix, nats=NatsConfig(url=stack.nats_url)), args)
        say(f"pre-filled {nats_prefix}{Topics.TRADES} on NATS in {time.perf_counter() - started:.1f}s")
        progress = NatsProgress(stack.nats_url, nats_prefix + Topics.TRADES)
        await progress.start()
        try:
            total = await progress.count()
            say(f"{total:,} trades on NATS in {progress.messages:,} messages ({total / max(progress.messages, 1):,.1f} "
                "trades per message: one instrument each)")  # fmt: skip
            rows.append(await throughput(offsets, nats_prefix, "at_least_once", total, tmp, args, progress))
            say(f"nats: {rows[-1]['trades/s']:,.0f} trades/s")
        finally:
            await progress.close()
            await delete_nats(stack.nats_url, nats_prefix)
    return rows


async def delete_nats(url: str, prefix: str) -> None:
    """The streams and key-value buckets of a NATS run (its prefix starts every name)."""
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        stem = prefix.rstrip(".").upper()
        for name in [info.config.name for info in await js.streams_info()]:
            if name and (name.startswith(stem) or name.startswith("KV_" + prefix.rstrip("."))):
                await js.delete_stream(name)
    finally:
        await client.close()


async def run(args: argparse.Namespace) -> None:
    offsets = Offsets(ensure_stack().kafka_bootstrap)
    await offsets.admin.start()
    prefixes = [args.prefix or f"bkt{uuid.uuid4().hex[:6]}.", f"bkl{uuid.uuid4().hex[:6]}."]
    rows_t: list[dict[str, Any]] = []
    rows_l: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-klines-") as tmp:
            if args.phase != "latency":
                rows_t = await run_throughput(offsets, Path(tmp), args, prefixes[0])
            if args.phase != "throughput":
                rows_l = [await latency(offsets, Path(tmp), args, prefixes[1])]
    finally:
        if args.keep:
            say(f"kept the topics {' '.join(p + '*' for p in prefixes)}")
        else:
            for prefix in prefixes:
                await offsets.delete(prefix.rstrip("."))  # the app ids and their changelogs start with it too
        await offsets.close()
    settings = " ".join(f"{k}={v}" for k, v in args.streams.items()) or "default settings"
    if rows_t:
        title = f"{args.count:,} trades of {args.instruments:,} instruments over {args.span_minutes:g} min"
        table(
            f"Throughput: one worker, 6 intervals, 12 partitions, {settings}, {title} (goal >= {GOAL_RATE:,}/s)", rows_t
        )
    if rows_l:
        table(f"Latency at {args.rate:,} trades/s over {args.instruments:,} instruments, at_least_once, trade publish "
              f"-> 1m kline received (goal p99 < {GOAL_P99_MS:g} ms)", rows_l)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["throughput", "latency", "both"], default="both")
    parser.add_argument("--guarantee", choices=["at_least_once", "exactly_once", "both"], default="both")
    parser.add_argument(
        "--bus",
        choices=["kafka", "nats", "both"],
        default="kafka",
        help="the throughput phase's bus (NATS: at_least_once; its messages hold one instrument each)",
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="trades pre-filled for the throughput runs")
    parser.add_argument("--instruments", type=int, default=1_000)
    parser.add_argument("--span-minutes", type=float, default=240, help="event time the pre-filled trades span")
    parser.add_argument("--max-seconds", type=float, default=60, help="cap on each throughput measurement")
    parser.add_argument("--rate", type=int, default=10_000, help="trades/s of the latency run")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds of the latency run")
    parser.add_argument("--streams", action="append", default=[], metavar="KEY=TOML", help="a [streams] setting")
    parser.add_argument("--profile", type=float, default=0, help="py-spy the worker this many seconds per run")
    parser.add_argument("--worker-cmd", default=str(BIN), help="a command taking market-ingestor's arguments")
    parser.add_argument("--prefix", help="reuse the trades of a --keep run with this topic prefix")
    parser.add_argument("--keep", action="store_true", help="keep the topics (the prefix is printed)")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # not the retries while new topics get their leaders
    args.streams = dict(setting.split("=", 1) for setting in args.streams)
    Worker.command = tuple(args.worker_cmd.split())
    started = time.perf_counter()
    asyncio.run(run(args))
    print(f"\nbench ran {time.perf_counter() - started:.0f}s; load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()

"""Push gateway under load: many WebSocket clients, a steady update rate through Kafka, delivery latency.

    .venv/bin/python bench/push.py [--clients 10000] [--slow-share 0.05] [--symbols 100] [--rate 1000]
                                   [--seconds 30] [--warmup 15] [--gateways 2] [--bus kafka|nats] [--py-spy DIR]

Processes besides the broker, all on this machine: ``--gateways`` gateways (``Gateway`` in processes of their own
sharing one port with ``push.reuse_port``, as ``market-ingestor push`` runs them; one per core by default), the
load generator (``push_load.py``: every client, fast and slow, in one process), and this one, which publishes
``--rate`` trades/s spread evenly over ``--symbols`` symbols through the bus, each trade's ``recv_ts`` set to the
publish time. Fast clients subscribe to one symbol each (spread evenly), so every update goes to
clients/symbols of them; slow clients subscribe to five symbols and stop reading, and come back when the
gateway closes them. Measured over ``--seconds`` after ``--warmup``:

- delivery latency publish -> fast client (ms histogram of every update, p50/p99/p99.9/max);
- completeness: updates fast clients received / updates they should have received;
- drops (gateway counters), lag disconnects, fast clients that lost anything;
- CPU (cores) per process in the window, the machine's busy share and load average (others may be running).

With ``--py-spy DIR`` the first gateway is sampled by py-spy during the window and its hottest functions listed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import msgspec

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import BusConfig, Config, KafkaConfig, LogConfig, NatsConfig, PushConfig
from market_ingestor.devstack import ensure_stack
from market_ingestor.model import Trade, encode
from push_load import HISTOGRAM_MS, run_clients

CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_open_files(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        sys.exit(f"open-file limit {soft} (hard {hard}) is below the {needed} this run needs: lower --clients")
    return soft


def run_gateway(config_json: bytes, pipe: Connection) -> None:
    from market_ingestor.logs import configure_logging
    from market_ingestor.push import Gateway

    config = msgspec.json.decode(config_json, type=Config)
    configure_logging(config.log.level, "kv")

    async def main() -> None:
        async with Gateway(config) as gateway:
            pipe.send(gateway.port)
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
        pipe.send(dataclasses.asdict(gateway.metrics))

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:  # float-ok: seconds
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def percentile(histogram: list[int], share: float) -> str:  # float-ok: a fraction
    total = sum(histogram)
    if not total:
        return "n/a"
    rank, seen = share * total, 0
    for ms, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return f">{HISTOGRAM_MS} ms" if ms == HISTOGRAM_MS else f"{ms}-{ms + 1} ms"
    return "n/a"


async def publish(
    config: Config,
    symbols: list[str],
    rate: int,
    warmup_s: float,  # float-ok: seconds
    seconds: float,  # float-ok: seconds
) -> Counter[str]:
    """Publishes ``rate`` trades/s, ten-millisecond ticks; returns per symbol how many fell in the window."""
    publisher = open_bus(config.bus).publisher()
    await publisher.start()
    topic = config.bus.topic_prefix + Topics.TRADES
    in_window: Counter[str] = Counter()
    tick_s, per_tick = 0.01, max(1, rate // 100)  # float-ok: seconds
    started = time.monotonic()
    window_start, window_end = started + warmup_s, started + warmup_s + seconds
    seq, tick = 0, 0
    price, qty = Decimal("27123.45"), Decimal("0.00123")
    while (now := time.monotonic()) < window_end:
        for _ in range(per_tick):
            symbol = symbols[seq % len(symbols)]
            ts = time.time_ns()
            trade = Trade("bench", symbol, str(seq), price, qty, "buy", ts, ts)
            await publisher.publish(topic, bus_key(trade), encode(trade), event_id(trade))
            if now >= window_start:
                in_window[symbol] += 1
            seq += 1
        tick += 1
        await asyncio.sleep(max(0.0, started + tick * tick_s - time.monotonic()))
    await publisher.stop()
    return in_window


def hottest(raw: Path, top: int = 15) -> list[str]:
    """py-spy's collapsed stacks -> the functions most often on top of the stack (self time)."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaves[stack.rsplit(";", 1)[-1]] += int(count)
        total += int(count)
    return [f"{100 * n / total:5.1f}%  {frame}" for frame, n in leaves.most_common(top)]


async def drop_topics(config: Config) -> None:
    """The run's topics (Kafka) or memory streams (NATS) are not left on the dev servers."""
    names = [spec.name for spec in prefixed(PIPELINE_TOPICS, config.bus.topic_prefix)]
    if config.bus.kind == "nats":
        import nats

        from market_ingestor.bus.nats import stream_name

        client = await nats.connect(config.bus.nats.url)
        for name in names:
            await client.jetstream().delete_stream(stream_name(name))
        await client.close()
    else:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=config.bus.kafka.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--slow-share", type=float, default=0.05)  # float-ok: a fraction
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000, help="updates (trades) per second, all symbols")
    parser.add_argument("--seconds", type=float, default=30.0)  # float-ok: seconds
    # Long enough for the slow clients to fill their buffers and queues: the window sees them losing updates.
    parser.add_argument("--warmup", type=float, default=15.0)  # float-ok: seconds
    parser.add_argument("--bus", choices=["kafka", "nats"], default="kafka")
    parser.add_argument(
        "--gateways", type=int, default=os.cpu_count() or 1, help="gateway processes sharing the port [one per core]"
    )
    parser.add_argument("--py-spy", type=Path, default=None, help="record the gateway with py-spy into this dir")
    args = parser.parse_args()

    limit = raise_open_files(args.clients + 2_000)
    stack = ensure_stack()
    slow = round(args.clients * args.slow_share)
    fast = args.clients - slow
    symbols = [f"S{n:03d}USDT" for n in range(args.symbols)]
    config = Config(
        log=LogConfig(level="WARNING"),
        bus=BusConfig(
            kind=args.bus,
            topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
            kafka=KafkaConfig(bootstrap=stack.kafka_bootstrap, partitions=12, linger_ms=2),
            nats=NatsConfig(url=stack.nats_url, storage="memory"),
        ),
        # Smaller kernel and user-space buffers per client than the defaults, so a client that stops reading is
        # behind within seconds at ten updates per second per symbol rather than minutes.
        push=PushConfig(
            host="127.0.0.1",
            port=0,
            reuse_port=True,
            max_clients=args.clients + 1_000,
            socket_send_buffer_bytes=8 * 1024,
            write_limit_bytes=16 * 1024,
        ),
    )
    spawn = multiprocessing.get_context("spawn")
    gateways: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    port = 0
    for n in range(args.gateways):
        gateway_config = msgspec.structs.replace(config, push=msgspec.structs.replace(config.push, port=port))
        gateway_pipe, child = spawn.Pipe()
        process = spawn.Process(
            target=run_gateway, args=(msgspec.json.encode(gateway_config), child), name=f"push-gateway-{n}"
        )
        process.start()
        port = gateway_pipe.recv()
        gateways.append((process, gateway_pipe))
    load_pipe, child = spawn.Pipe()
    load = spawn.Process(target=run_clients, args=("127.0.0.1", port, fast, slow, 5, symbols, child), name="push-load")
    load.start()
    connected = load_pipe.recv()
    print(
        f"{connected['connected']} clients connected in {connected['seconds']:.1f} s "
        f"({fast} fast, {slow} slow; open-file limit {limit}); failures: {connected['failures'] or 'none'}"
    )

    start_ns = time.time_ns() + int(args.warmup * 1e9)
    load_pipe.send({"window_ns": (start_ns, start_ns + int(args.seconds * 1e9))})
    pids = {f"gateway {n}": process.pid for n, (process, _) in enumerate(gateways)}
    pids |= {"load generator": load.pid, "publisher (this)": os.getpid()}
    spy = None

    async def run() -> Counter[str]:
        nonlocal spy
        publishing = asyncio.ensure_future(publish(config, symbols, args.rate, args.warmup, args.seconds))
        await asyncio.sleep(args.warmup)
        before = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
        busy_before = machine_busy()
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
            py_spy = str(Path(sys.executable).parent / "py-spy")
            spy = await asyncio.create_subprocess_exec(
                *(py_spy, "record", "-p", str(gateways[0][0].pid), "-d", str(int(args.seconds)), "-r", "200"),
                *("--format", "raw", "-o", str(args.py_spy / "gateway.txt")),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        counts = await publishing
        if spy is not None:
            await spy.wait()
        busy_after = machine_busy()
        after = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
        cpu.update({name: (after[name] - before[name]) / args.seconds for name in after})
        cpu["machine busy share"] = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
        return counts

    cpu: dict[str, float] = {}  # float-ok: CPU shares
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    counts_in_window = asyncio.run(run())
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    time.sleep(2.0)  # deliveries in flight
    load_pipe.send("report")
    stats = load_pipe.recv()
    metrics: Counter[str] = Counter()
    for process, pipe in gateways:
        pipe.send("stop")
        metrics.update({k: v for k, v in pipe.recv().items() if isinstance(v, int)})
        process.join(60)
    load.join(60)

    asyncio.run(drop_topics(config))
    per_symbol_fast = Counter(symbols[i % len(symbols)] for i in range(fast))
    expected = sum(counts_in_window[s] * per_symbol_fast[s] for s in symbols)
    histogram = stats["histogram"]
    worst = max((ms for ms, n in enumerate(histogram) if n), default=0)
    counts = stats["counts"]
    report = {
        "clients (fast + slow)": f"{fast} + {slow}; connected at the end: {stats['clients']}",
        "published": (
            f"{sum(counts_in_window.values())} trades in {args.seconds:g} s over {len(symbols)} symbols ({args.bus})"
        ),
        "fast clients: delivered / expected": f"{sum(histogram)} / {expected}",
        "latency p50 / p99 / p99.9 / max": " / ".join(
            [*(percentile(histogram, q) for q in (0.5, 0.99, 0.999)), f"{worst} ms"]
        ),
        "fast clients that lost updates": (
            f"{stats['fast_clients_with_drops']} (updates lost: {counts.get('fast updates lost (notices)', 0)}); "
            f"fast connections lost: {counts.get('fast connections lost', 0)}"
        ),
        "slow clients: closed by the gateway and reconnected": counts.get("slow reconnects", 0),
        "gateways: processes / connections accepted": f"{len(gateways)} / {metrics['connections_total']}",
        "gateway: updates dropped / lag disconnects": (
            f"{metrics['updates_dropped_total']} / {metrics['lag_disconnects_total']}"
        ),
        "gateways: messages sent / updates in (all processes)": (
            f"{metrics['messages_sent_total']} / {metrics['updates_received_total']}"
        ),
        "CPU (cores) in the window": ", ".join(f"{name} {share:.2f}" for name, share in cpu.items()),
        "load before": uptime_before,
        "load after": uptime_after,
        "load generator failures": stats["failures"] or "none",
    }
    for name, value in report.items():
        print(f"{name:58} {value}")
    if spy is not None and args.py_spy:
        print("gateway, hottest functions (self time):")
        for line in hottest(args.py_spy / "gateway.txt"):
            print("   ", line)


if __name__ == "__main__":
    main()

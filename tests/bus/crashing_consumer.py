"""Run by the crash test as its own process: consume everything, commit half, report, then wait to be killed.

    python crashing_consumer.py CONFIG_JSON TOPIC GROUP EXPECTED
Prints one JSON line: {"received": [[key, value], ...], "committed": [[key, value], ...]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict

import msgspec

from market_ingestor.bus import Delivery, open_bus
from market_ingestor.config import BusConfig


async def main(config_json: str, topic: str, group: str, expected: int) -> None:
    subscriber = open_bus(msgspec.json.decode(config_json, type=BusConfig)).subscriber([topic], group)
    await subscriber.start()
    received: list[Delivery] = []
    while len(received) < expected:
        batch = await subscriber.fetch(max_records=500, timeout_s=30.0)
        if not batch:
            break
        received.extend(batch)
    by_partition: dict[int, list[Delivery]] = defaultdict(list)
    for delivery in received:
        by_partition[delivery.partition].append(delivery)
    committed = [d for records in by_partition.values() for d in records[: len(records) // 2]]
    await subscriber.commit(committed)
    pairs = lambda ds: [[d.key, d.value.decode()] for d in ds]  # noqa: E731
    print(json.dumps({"received": pairs(received), "committed": pairs(committed)}), flush=True)
    await asyncio.Event().wait()  # keep the session open until SIGKILL: no clean leave, no final commit


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))

"""Reading a service's ``/metrics`` and ``/healthz`` over HTTP, as Prometheus and an orchestrator would."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    """A free port below the kernel's ephemeral range, for a service started next. A port the kernel hands out for
    port 0 is often taken by some outgoing connection (Kafka clients of tests running alongside) before the
    service has started and bound it; below the range, only listeners that chose the port compete for it."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32_768
    for _ in range(100):
        port = random.randrange(20_000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port found below the ephemeral range")


class Scrape:
    """One scrape: samples by name (``market_frames_total``, ``sink_batch_size_count``...)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = [sample for family in self.families.values() for sample in family.samples]

    def matching(self, name: str, **labels: str) -> list[Any]:
        return [s for s in self.samples if s.name == name and labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float:  # float-ok: Prometheus sample values
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
        return sum(sample.value for sample in self.matching(name, **labels))

    def has(self, name: str) -> bool:
        """Whether the metric family is exposed (``# TYPE`` line), whether or not it has samples yet."""
        return f"# TYPE {name} " in self.text


async def scrape(port: int) -> Scrape:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        return Scrape(await response.text())


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def answering(port: int) -> bool:
    try:
        return (await healthz(port))[0] == 200
    except aiohttp.ClientError:
        return False


async def until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    timeout_s: float = 60,  # float-ok: a duration
    alive: Callable[[], str | None] = lambda: None,
) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` (and why the process died, if ``alive`` says so)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        died = alive()
        if died is not None:
            raise AssertionError(f"{what}: the process died: {died}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s} s")
        await asyncio.sleep(0.1)


async def listening(port: int) -> bool:
    """Whether a server accepts connections on ``port`` (the push gateway serves /metrics on another port, which
    can answer before its WebSocket port is bound)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True

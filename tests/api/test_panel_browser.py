"""The control panel in a real headless Chromium, on the live pipeline of ``up --simulate --with worker,push,api``
(simulator -> ingest -> Kafka -> worker -> push gateway; the API on the dev stack's PostgreSQL): the page shows the
connectors connected, the configured symbols subscribed, throughput above zero and candles drawn from stored
history plus the push gateway's live klines (checked in the DOM and in the screenshot's pixels); a symbol added
through the page's form reaches the control topic, the ingest service subscribes it and the page shows it so.

``MARKET_INGESTOR_PANEL_SCREENSHOT=docs/panel.png`` also writes the screenshot there (the README's picture).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from api_helpers import write
from browser import Browser, chromium_binary
from PIL import Image

from market_ingestor.config import load_config
from market_ingestor.ingestor.control import read_state
from market_ingestor.model import Kline

CHROMIUM = chromium_binary()
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium binary on PATH (Debian: apt-get install chromium; scripts/install-system-deps.sh does)",
    ),
]

UP_RGB, DOWN_RGB = (0x26, 0xA6, 0x9A), (0xEF, 0x53, 0x50)  # the chart's candle colours (panel.js COLORS)
MINUTE_NS = 60_000_000_000
HISTORY = 45


def free_port() -> int:
    """A free port below the ephemeral range, so that no client connection takes it before our server binds."""
    while True:
        port = random.randrange(20_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port


def history(now_ns: int) -> list[Kline]:
    """Closed 1m klines of binance.BTCUSDT before the current minute, a random walk ending near the simulator's
    price (60000, tick 0.1)."""
    rng, tick = random.Random(7), Decimal("0.1")
    first = now_ns - now_ns % MINUTE_NS - HISTORY * MINUTE_NS
    close, klines = 600_000 - 10 * HISTORY, []  # steps average +10 ticks
    for n in range(HISTORY):
        open_ = close
        close = open_ + rng.randint(-30, 50)
        high, low = max(open_, close) + rng.randint(0, 15), min(open_, close) - rng.randint(0, 15)
        o, h, lo, c = (tick * v for v in (open_, high, low, close))
        volume = Decimal(rng.randint(1, 400)) / 100
        start = first + n * MINUTE_NS
        klines.append(
            Kline("binance", "BTCUSDT", "1m", start, start + MINUTE_NS - 1, o, h, lo, c, volume, volume * c,
                  10, volume, volume * c, None, None, c, True)
        )  # fmt: skip
    return klines


@pytest.fixture
async def pipeline(dev_stack, database_url, tmp_path) -> AsyncIterator[tuple[str, Path]]:
    """``up --simulate --with worker,push,api``; yields the panel's URL and the config file."""
    prefix = f"p{uuid.uuid4().hex[:8]}."
    api_port, push_port = free_port(), free_port()
    config_path = tmp_path / "market-ingestor.toml"
    config_path.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n'
        f'[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\npartitions = 2\n'
        f'[database]\nurl = "{database_url}"\n'
        f'[streams]\napp_id = "{prefix.rstrip(".")}"\ndata_dir = "{tmp_path / "worker"}"\nintervals = ["1m"]\n'
        'indicators = ["rsi_14"]\n'
        f"[api]\nport = {api_port}\nauth_enabled = false\npanel_refresh_s = 1.0\n"
        f'[push]\nhost = "127.0.0.1"\nport = {push_port}\n'
        '[exchanges.binance]\nsymbols = ["BTCUSDT", "ETHUSDT"]\n[exchanges.okx]\nsymbols = ["BTCUSDT"]\n'
    )
    await write(database_url, history(time.time_ns()))
    stderr = (tmp_path / "up.stderr").open("wb")
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_path),
        "up", "--simulate", "--port", "0", "--rate", "100", "--with", "worker,push,api",
        stdout=asyncio.subprocess.PIPE, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert up.stdout is not None
        panel = f"http://127.0.0.1:{api_port}/panel/"
        lines = []
        while not any(f"control panel: {panel}" in line for line in lines):
            line = (await asyncio.wait_for(up.stdout.readline(), 90)).decode()
            assert line, f"up exited: {(tmp_path / 'up.stderr').read_text()[-3000:]}"
            lines.append(line)
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    async with http.get(panel) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "the API never served the panel"
                await asyncio.sleep(0.5)
        yield panel, config_path
        up.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.wait(), 120) == 0, (tmp_path / "up.stderr").read_text()[-3000:]
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        stderr.close()


def candle_pixels(png: bytes, box: dict[str, float]) -> tuple[int, int, int]:
    """Pixels of the up and down colours inside the canvas's box, and the number of distinct colours there."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    region = image.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
    counts = {rgb: n for n, rgb in region.getcolors(maxcolors=1 << 20) or []}
    return counts.get(UP_RGB, 0), counts.get(DOWN_RGB, 0), len(counts)


BINANCE = "document.querySelector('#exchanges [data-exchange=\"binance\"]')"


async def test_the_panel_shows_the_live_pipeline_and_adds_a_symbol_through_the_control_topic(pipeline, tmp_path):
    panel, config_path = pipeline
    assert CHROMIUM is not None
    async with Browser(CHROMIUM, tmp_path / "chromium", height=1240) as browser:
        await browser.navigate(panel)

        # Connectors: both exchanges connected, reported by the ingest process through the status topic.
        for exchange in ("binance", "okx"):
            await browser.wait_for(
                f'!!document.querySelector(\'#connectors tr[data-exchange="{exchange}"][data-state="connected"]\')',
                f"{exchange} connected",
                90,
            )
        # Symbols: the configured ones, each subscribed by its connector.
        subscribed = f"[...{BINANCE}.querySelectorAll('li[data-subscribed=\"true\"]')].map(li => li.dataset.symbol)"
        assert await browser.wait_for(f"{subscribed}.length === 2 && {subscribed}", "symbols subscribed") == [
            "BTCUSDT",
            "ETHUSDT",
        ]
        # Throughput from Kafka offsets: ingest writes trades, the worker reads them.
        for stage, direction in (("ingest", "out"), ("worker", "in"), ("worker", "out")):
            rows = f'#throughput tr[data-stage="{stage}"][data-direction="{direction}"]'
            rate = f"[...document.querySelectorAll('{rows}')].reduce((sum, tr) => sum + Number(tr.dataset.rate), 0)"
            assert await browser.wait_for(f"{rate} > 0 && {rate}", f"{stage} {direction} throughput", 90) > 0
        # The chart: stored history, then the push gateway's live kline of the current minute.
        chart = "document.getElementById('chart').dataset"
        await browser.wait_for(f"Number({chart}.updates) > 0", "live kline updates from the push gateway", 90)
        candles = await browser.wait_for(f"Number({chart}.candles) > {HISTORY} && Number({chart}.candles)", "candles")
        assert candles in (HISTORY + 1, HISTORY + 2)  # the history and the live minute (or two, at a boundary)
        assert (await browser.evaluate("document.getElementById('chart-state').textContent")) == "live · kline.1m"
        assert (await browser.evaluate("document.getElementById('chart-last').textContent")).startswith(
            "binance.BTCUSDT "
        )
        assert await browser.evaluate("document.getElementById('errors-card').hidden")

        await asyncio.sleep(1.5)  # one more status poll, so the screenshot shows filled tables
        png = await browser.screenshot()
        for where in (tmp_path / "panel.png", os.environ.get("MARKET_INGESTOR_PANEL_SCREENSHOT")):
            if where:
                await asyncio.to_thread(Path(where).write_bytes, png)
        box = await browser.evaluate(
            "(() => { const r = document.getElementById('chart').getBoundingClientRect();"
            " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
        )
        up_pixels, down_pixels, colours = candle_pixels(png, box)
        assert up_pixels > 200 and down_pixels > 200, (up_pixels, down_pixels)  # candles of both kinds drawn
        assert colours > 20  # axes, labels, volume bars: not a blank or uniform canvas

        # A malformed symbol is refused with the API's reason, and nothing is added.
        form = (
            "(symbol => { document.getElementById('add-exchange').value = 'binance';"
            " document.getElementById('add-symbol').value = symbol;"
            " document.getElementById('add-form').requestSubmit(); })"
        )
        await browser.evaluate(f"{form}('BTC/USDT')")
        message = "document.getElementById('control-message')"
        refused = await browser.wait_for(f"{message}.className === 'error' && {message}.textContent", "an error")
        assert "malformed symbol 'BTC/USDT'" in refused

        # Adding a symbol through the form: it is in the list at once, confirmed from the control topic ...
        await browser.evaluate(f"{form}('xrpusdt')")
        confirmed = await browser.wait_for(f"{message}.textContent.includes('applied') && {message}.textContent", "ok")
        assert confirmed.startswith("add binance XRPUSDT")
        assert await browser.evaluate(f"!!{BINANCE}.querySelector('li[data-symbol=\"XRPUSDT\"]')")
        state = await read_state(load_config(config_path))
        assert state.symbols["binance"] == frozenset({"BTCUSDT", "ETHUSDT", "XRPUSDT"})
        # ... and the ingest service subscribes it (the simulator lists it): the page shows it subscribed.
        await browser.wait_for(
            f'!!{BINANCE}.querySelector(\'li[data-symbol="XRPUSDT"][data-subscribed="true"]\')', "XRPUSDT subscribed"
        )
        assert not [line for line in browser.console if line.startswith("exception")], browser.console

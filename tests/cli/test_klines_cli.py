"""``market-ingestor klines``: normalized trades (JSON lines) in, klines out, through click's CliRunner."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from market_ingestor.cli.ingest import parse
from market_ingestor.cli.klines import klines
from market_ingestor.model import Quote, Trade, encode

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "exchange-samples"
T0 = 1_709_208_000 * 10**9  # 2024-02-29 12:00:00 UTC
MINUTE = 60 * 10**9
D = Decimal


def trade(exchange: str, symbol: str, tid: int, ts: int, price: str, qty: str, side: str = "buy") -> bytes:
    return encode(Trade(exchange, symbol, str(tid), D(price), D(qty), side, ts, ts))  # type: ignore[arg-type]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def run(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(klines, list(args), input=input)


def rows(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """Two instruments, a quote, a malformed line, a late trade and a too-late one."""
    quote = Quote("binance", "BTCUSDT", D("99"), D("1"), D("101"), D("1"), T0, T0)
    return write_lines(
        tmp_path / "trades.jsonl",
        [
            trade("binance", "BTCUSDT", 1, T0 + 5 * 10**9, "100.10", "0.5"),  # line 1
            trade("okx", "BTC-USDT", 7, T0 + 6 * 10**9, "100.2", "2", "sell"),  # line 2
            encode(quote),  # line 3: not a trade, skipped
            b'{"type":"trade","exchange":"binance"',  # line 4: malformed
            trade("binance", "BTCUSDT", 2, T0 + 2 * MINUTE + 10**9, "100.30", "1.5", "sell"),  # line 5
            trade("binance", "BTCUSDT", 3, T0 + 30 * 10**9, "99.90", "1"),  # line 6: late, corrects 12:00
            trade("binance", "BTCUSDT", 4, T0 - 60 * MINUTE, "1", "1"),  # line 7: too late
            b"",  # an empty line is nothing
        ],
    )


def test_klines_of_two_instruments_in_time_order_with_problems_reported_by_line(small: Path) -> None:
    result = run("--interval", "1m", "-i", "5m", str(small))
    assert result.exit_code == 0, result.output
    assert "line 4: Input data was truncated" in result.stderr
    assert "line 7: trade 4 at 2024-02-29T11:00:00.000000000Z is too late" in result.stderr
    assert "2 line(s) could not be used" in result.stderr
    got = [
        (r["open_time"], r["exchange"], r["symbol"], r["interval"], r["revision"], r["trade_count"])
        for r in rows(result)
    ]
    assert got == [
        (T0, "binance", "BTCUSDT", "1m", 0, 1),
        (T0, "binance", "BTCUSDT", "1m", 1, 2),  # the correction right after the kline it corrects
        (T0, "binance", "BTCUSDT", "5m", 0, 3),
        (T0, "okx", "BTC-USDT", "1m", 0, 1),
        (T0, "okx", "BTC-USDT", "5m", 0, 1),
        (T0 + MINUTE, "binance", "BTCUSDT", "1m", 0, 0),  # flat
        (T0 + 2 * MINUTE, "binance", "BTCUSDT", "1m", 0, 1),
    ]  # fmt: skip
    corrected = rows(result)[1]
    assert corrected == {
        "type": "kline", "exchange": "binance", "symbol": "BTCUSDT", "interval": "1m",
        "open_time": T0, "close_time": T0 + MINUTE - 1, "open": "100.10", "high": "100.10", "low": "99.90",
        "close": "99.90", "volume": "1.5", "quote_volume": "149.950", "trade_count": 2,
        "taker_buy_volume": "1.5", "taker_buy_quote_volume": "149.950", "first_trade_id": "1",
        "last_trade_id": "3", "vwap": "99.96666666666666666666666666666667", "closed": True, "revision": 1,
    }  # fmt: skip
    assert rows(result)[5]["open"] == rows(result)[5]["close"] == "99.90"  # the corrected close carried forward


def test_final_prints_only_the_last_revision(small: Path) -> None:
    result = run("-i", "1m", "--final", str(small))
    assert [(r["symbol"], r["open_time"], r["revision"]) for r in rows(result)] == [
        ("BTCUSDT", T0, 1), ("BTC-USDT", T0, 0), ("BTCUSDT", T0 + MINUTE, 0), ("BTCUSDT", T0 + 2 * MINUTE, 0),
    ]  # fmt: skip


def test_strict_fails_on_any_unusable_line(small: Path) -> None:
    result = run("-i", "1m", "--strict", str(small))
    assert result.exit_code == 1
    assert len(rows(result)) == 5  # the klines are still printed


def test_stdin_and_the_default_intervals() -> None:
    data = trade("binance", "ETHUSDT", 1, T0 + 1, "3000.5", "0.25") + b"\n"
    result = run("-", input=data)
    assert result.exit_code == 0, result.output
    # by open_time first: the day began at midnight, the other windows at noon, shortest first
    assert [(r["interval"], r["open_time"]) for r in rows(result)] == [
        ("1d", T0 - 12 * 60 * MINUTE), ("1m", T0), ("5m", T0), ("15m", T0), ("1h", T0), ("4h", T0),
    ]  # fmt: skip
    assert {(r["quote_volume"], r["closed"]) for r in rows(result)} == {("750.125", True)}


def test_grace_decides_what_is_late(tmp_path: Path) -> None:
    lines = [
        trade("binance", "BTCUSDT", 1, T0 + 10**9, "1", "1"),
        trade("binance", "BTCUSDT", 2, T0 + MINUTE + 3 * 10**9, "1", "1"),
        trade("binance", "BTCUSDT", 3, T0 + 2 * 10**9, "1", "1"),  # 3 s behind the 12:00 minute's end
    ]
    path = write_lines(tmp_path / "t.jsonl", lines)
    late = rows(run("-i", "1m", str(path)))
    assert [(r["open_time"], r["revision"]) for r in late] == [(T0, 0), (T0, 1), (T0 + MINUTE, 0)]
    in_time = rows(run("-i", "1m", "--grace-ms", "5000", str(path)))
    assert [(r["open_time"], r["revision"], r["trade_count"]) for r in in_time] == [(T0, 0, 2), (T0 + MINUTE, 0, 1)]


@pytest.mark.parametrize(("interval", "message"), [("1M", "months are not supported"), ("5x", "invalid kline")])
def test_a_bad_interval_is_a_usage_error(tmp_path: Path, interval: str, message: str) -> None:
    result = run("-i", interval, str(write_lines(tmp_path / "t.jsonl", [])))
    assert result.exit_code == 2
    assert message in result.stderr


# --- the real recordings -----------------------------------------------------------------------------------------


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"recorded sessions not found at {SAMPLES}")
    return SAMPLES


def parsed(tmp_path: Path, *args: str) -> Path:
    result = CliRunner().invoke(parse, list(args))
    assert result.exit_code == 0, result.output
    return write_lines(tmp_path / "parsed.jsonl", [line.encode() for line in result.stdout.splitlines()])


def expected_one_minute(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Independent recomputation of the 1m klines from the parsed trades (the recordings are in time order)."""
    windows: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "trade":
            windows[(event["symbol"], event["ts"] - event["ts"] % MINUTE)].append(event)
    expected = {}
    for key, trades in windows.items():
        trades.sort(key=lambda t: t["ts"])
        expected[key] = {
            "open": D(trades[0]["price"]),
            "high": max(D(t["price"]) for t in trades),
            "low": min(D(t["price"]) for t in trades),
            "close": D(trades[-1]["price"]),
            "volume": sum((D(t["qty"]) for t in trades), D(0)),
            "quote_volume": sum((D(t["price"]) * D(t["qty"]) for t in trades), D(0)),
            "trade_count": len(trades),
            "first_trade_id": trades[0]["trade_id"],
            "last_trade_id": trades[-1]["trade_id"],
        }
    return expected


def as_expected(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (D(v) if isinstance(v, str) and k not in ("first_trade_id", "last_trade_id") else v)
            for k, v in row.items() if k in ("open", "high", "low", "close", "volume", "quote_volume", "trade_count",
                                             "first_trade_id", "last_trade_id")}  # fmt: skip


def test_the_coinbase_recording_aggregates_to_the_recomputed_klines(samples: Path, tmp_path: Path) -> None:
    trades = parsed(tmp_path, "-e", "coinbase", str(samples / "COINBASE.ws.28.0"))
    result = run("-i", "1m", "-i", "5m", "--strict", str(trades))
    assert result.exit_code == 0, result.output
    out = rows(result)
    ones = {(r["symbol"], r["open_time"]): as_expected(r) for r in out if r["interval"] == "1m"}
    assert ones == expected_one_minute(trades)
    five = {r["symbol"]: r for r in out if r["interval"] == "5m"}
    assert D(five["SKLUSD"]["volume"]) == D("46731.3") and D(five["DASHBTC"]["volume"]) == D("15.755")
    assert (five["SKLUSD"]["trade_count"], five["SKLUSD"]["open"], five["SKLUSD"]["first_trade_id"]) == (
        52, "0.791", "1568268",
    )  # fmt: skip
    assert all(r["closed"] and r["revision"] == 0 for r in out)
    assert [r["open_time"] for r in out] == sorted(r["open_time"] for r in out)


def test_the_binance_recording_prints_its_two_trades_as_klines(samples: Path, tmp_path: Path) -> None:
    trades = parsed(
        tmp_path, "-e", "binance", "--instruments", str(samples / "BINANCE.0"), str(samples / "BINANCE.ws.1.0")
    )
    result = run("-i", "1m", str(trades))
    assert result.exit_code == 0, result.output
    assert {(r["symbol"], r["volume"], r["trade_count"], r["vwap"] == r["close"]) for r in rows(result)} == {
        ("NKNUSDT", "58.00000000", 1, True), ("LRCBTC", "177.00000000", 1, True),
    }  # fmt: skip

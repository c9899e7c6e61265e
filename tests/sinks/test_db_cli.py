"""``market-ingestor db`` through click's CliRunner against the dev stack's PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result

from market_ingestor.cli.main import cli
from market_ingestor.model import BookDelta, IndicatorValue, Quote, Trade, encode
from market_ingestor.streams.klines import KlineSettings, aggregate

pytestmark = pytest.mark.postgres

D = Decimal
T0 = 1_709_208_000 * 10**9  # 2024-02-29 12:00:00 UTC
SECOND = 10**9


@pytest.fixture
def db(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("MARKET_INGESTOR__STORAGE__STORE_QUOTES", "true")
    monkeypatch.chdir(tmp_path)  # no stray market-ingestor.toml

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["db", *args])

    return invoke


def trades(symbol: str, count: int) -> list[Trade]:
    return [
        Trade(
            "binance",
            symbol,
            str(i),
            D("100.5") + i,
            D("0.001") * i,
            "buy" if i % 2 else "sell",
            T0 + i * 7 * SECOND,
            T0,
        )
        for i in range(1, count + 1)
    ]


def lines_file(path: Path, events: list[Any], extra: dict[int, bytes] | None = None) -> Path:
    lines = [encode(e) for e in events]
    for index, raw in sorted((extra or {}).items()):
        lines.insert(index, raw)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    import asyncio

    async def go() -> dict[str, list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(database_url)
        try:
            return {
                table: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5")]
                for table in ("market_trades", "market_klines", "indicator_values", "market_quotes")
            }
        finally:
            await conn.close()

    return asyncio.run(go())


def test_migrate_and_status(db: Any) -> None:
    assert db("migrate").stdout.strip() == "schema up to date (partitioned)"
    result = db("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["mode"] == "partitioned" and status["pending"] == []
    assert [row["version"] for row in status["applied"]][:2] == [1, 2]
    assert status["partitions"]["market_trades"]
    assert "mode: partitioned" in db("status").stdout


def test_loading_a_file_twice_leaves_the_tables_unchanged(db: Any, database_url: str, tmp_path: Path) -> None:
    ts = trades("LOADUSDT", 40)
    klines = list(aggregate(ts, KlineSettings(intervals=("1m", "5m"))))
    indicator = IndicatorValue("binance", "LOADUSDT", "1m", "sma_20", T0, {"value": D("100.123456789012345678")})
    quote = Quote("binance", "LOADUSDT", D("100"), D("1.5"), D("100.1"), D("2"), T0, T0 + 1)
    book = BookDelta("binance", "LOADUSDT", ((D("1"), D("2")),), (), 1, 2, T0, T0)
    path = lines_file(tmp_path / "in.jsonl", [*ts, *klines, indicator, quote, book])
    first = db("load", str(path))
    assert first.exit_code == 0, first.output
    assert f"new trades 40, klines written {len({(k.interval, k.open_time) for k in klines})}" in first.stdout
    assert "not stored (no table): BookDelta 1" in first.stdout
    before = snapshot(database_url)
    assert len(before["market_trades"]) == 40 and len(before["indicator_values"]) == 1
    assert len(before["market_quotes"]) == 1
    again = db("load", "--batch-size", "7", str(path))
    assert again.exit_code == 0, again.output
    assert "new trades 0, klines written 0, indicator values written 0, new quotes 0" in again.stdout
    assert snapshot(database_url) == before


def test_a_bad_line_stops_the_load_after_the_lines_before_it(db: Any, database_url: str, tmp_path: Path) -> None:
    ts = trades("BADUSDT", 4)
    bad_price = encode(Trade("binance", "BADUSDT", "99", D("-1"), D("1"), "buy", T0, T0))
    path = lines_file(tmp_path / "bad.jsonl", ts, {2: b'{"type":"trade","exchange":"binance"', 4: bad_price})
    result = db("load", str(path))
    assert result.exit_code == 1
    assert "line 3: not a normalized event" in result.stderr and "Every line before it was loaded" in result.stderr
    stored = [r[2] for r in snapshot(database_url)["market_trades"] if r[1] == "BADUSDT"]
    assert stored == ["1", "2"]
    skipping = db("load", "--skip-bad", str(path))
    assert skipping.exit_code == 1
    assert "line 3: not a normalized event" in skipping.stderr
    assert "line 5: trade 99: price -1 is not a positive number" in skipping.stderr
    assert "2 bad line(s) skipped" in skipping.stderr
    assert "new trades 2" in skipping.stdout  # 3 and 4; 1 and 2 were there
    stored = sorted(r[2] for r in snapshot(database_url)["market_trades"] if r[1] == "BADUSDT")
    assert stored == ["1", "2", "3", "4"]


def test_rebuild_klines_reports_and_repairs_a_wrong_kline(db: Any, database_url: str, tmp_path: Path) -> None:
    ts = trades("FIXUSDT", 30)  # 12:00:07 .. 12:03:30
    klines = list(aggregate(ts, KlineSettings(intervals=("1m",))))
    wrong = klines[1]
    wrong = type(wrong)(**{f: getattr(wrong, f) for f in wrong.__struct_fields__} | {"high": D("1000")})
    path = lines_file(tmp_path / "fix.jsonl", [*ts, *klines[:1], wrong, *klines[3:]])  # 12:02 is missing
    assert db("load", str(path)).exit_code == 0
    args = [
        "rebuild-klines",
        "-e",
        "binance",
        "-s",
        "FIXUSDT",
        "-i",
        "1m",
        "--from",
        "2024-02-29T12:00",
        "--to",
        "2024-02-29T13:00",
    ]
    result = db(*args)
    assert result.exit_code == 1 and "Error" not in result.stderr, result.output
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["open_time"], d["kind"]) for d in found] == [
        ("2024-02-29T12:01:00.000000000Z", "different"),
        ("2024-02-29T12:02:00.000000000Z", "missing"),
    ]
    assert found[0]["fields"] == {"high": ["1000", str(klines[1].high)]}
    assert "4 window(s) compared, 2 difference(s)" in result.stderr
    assert db(*args, "--repair").exit_code == 0
    clean = db(*args)
    assert clean.exit_code == 0 and clean.stdout == ""
    revisions = {r[3]: r[-1] for r in snapshot(database_url)["market_klines"] if r[1] == "FIXUSDT"}
    assert sorted(revisions.values()) == [0, 0, 0, 1]  # the missing one was written at revision 0

"""``market-ingestor db`` through click's CliRunner against both PostgreSQL servers of the dev stack."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result

from db_helpers import PgServer, with_database
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


def test_migrate_and_status(db: Any, pg_server: PgServer) -> None:
    mode = pg_server.mode.value
    first = db("migrate").stdout.splitlines()
    assert first[0] == "applied  0001_market_tables" and first[-1] == f"schema up to date ({mode})"
    assert db("migrate").stdout.splitlines() == [f"schema up to date ({mode})"]  # nothing to apply, nothing changed
    result = db("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["mode"] == mode and status["pending"] == []
    assert [row["version"] for row in status["applied"]][:2] == [1, 2]
    text = db("status").stdout
    assert f"mode: {mode}" in text
    if pg_server.timescale:
        assert status["timescaledb"] == "2.28.3" and status["partitions"]["market_trades"] == []  # no chunk yet
        trades_info = status["hypertables"]["market_trades"]
        assert trades_info["compress_orderby"] == "ts DESC,trade_id" and trades_info["retention"] == "none"
        assert [job["proc"] for job in trades_info["jobs"]] == ["policy_compression"]
        assert "market_trades: hypertable, chunks of 1 day(s): 0 chunk(s) none, 0 compressed" in text
        assert "policy_compression every 12:00:00" in text
    else:
        assert status["timescaledb"] is None and status["hypertables"] == {}
        assert status["partitions"]["market_trades"]
        assert "keeps all (retention off)" in text


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


def test_rebuild_klines_prints_stored_zeros_in_plain_digits(db: Any, tmp_path: Path) -> None:
    """NUMERIC comes back from PostgreSQL as Decimal("0E-8"): printed as the stored "0.00000000"."""
    ts = trades("ZEROUSDT", 8)  # 12:00:07 .. 12:00:56, one window
    (kline,) = aggregate(ts, KlineSettings(intervals=("1m",)))
    wrong = type(kline)(**{f: getattr(kline, f) for f in kline.__struct_fields__} | {"volume": D("0.00000000")})
    assert db("load", str(lines_file(tmp_path / "zero.jsonl", [*ts, wrong]))).exit_code == 0
    args = ["-e", "binance", "-s", "ZEROUSDT", "-i", "1m", "--from", "2024-02-29T12:00", "--to", "2024-02-29T12:01"]
    result = db("rebuild-klines", *args)
    assert result.exit_code == 1, result.output
    (found,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert found["fields"] == {"volume": ["0.00000000", "0.036"]}


def old_trades(symbol: str, count: int, days_ago: int) -> list[Trade]:
    start = (time.time_ns() // DAY - days_ago) * DAY
    return [
        Trade("binance", symbol, str(i), D("10") + i, D("1"), "buy", start + i * SECOND, start) for i in range(count)
    ]


def test_loading_rows_older_than_retention_warns_with_count_and_cutoff_before_writing(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = lines_file(tmp_path / "old.jsonl", old_trades("OLDUSDT", 7, 40) + old_trades("NEWUSDT", 3, 2))
    with database_of_its_own(pg_server) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("MARKET_INGESTOR__STORAGE__RETENTION_DAYS", "30")  # TimescaleDB: made by `db migrate`
        assert CliRunner().invoke(cli, ["db", "migrate"]).exit_code == 0
        result = CliRunner().invoke(cli, ["db", "load", str(path)])
        assert result.exit_code == 0, result.output
        cutoff_day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 30 * 86_400))
        warning = "warning: 7 row(s) for market_trades in the next batch are older than its retention cutoff"
        assert warning in result.stderr and cutoff_day in result.stderr
        assert "older than the retention window (deleted by the next retention run): market_trades 7" in result.stderr
        assert "new trades 10" in result.stdout  # written all the same: a warning, not a refusal
        # ... and `db maintain` then shows the retention at work, in each mode's terms.
        maintained = CliRunner().invoke(cli, ["db", "maintain"])
        assert maintained.exit_code == 0, maintained.output
        unit = "chunk" if pg_server.timescale else "partition"
        assert f"market_trades: dropped 1 {unit}(s): " in maintained.stdout
        assert count_rows(url, "market_trades") == 3


def test_maintain_reports_what_it_did_in_each_mode(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = lines_file(tmp_path / "week.jsonl", old_trades("CMPUSDT", 5, 10))
    with database_of_its_own(pg_server) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        assert CliRunner().invoke(cli, ["db", "load", str(path)]).exit_code == 0
        result = CliRunner().invoke(cli, ["db", "maintain"])
        assert result.exit_code == 0, result.output
        if pg_server.timescale:  # compression after 7 days (the default)
            assert result.stdout.startswith("market_trades: compressed 1 chunk(s): _hyper_"), result.stdout
            status = json.loads(CliRunner().invoke(cli, ["db", "status", "--json"]).stdout)
            assert status["hypertables"]["market_trades"]["compressed_chunks"] == 1
        else:  # partitions ahead were made by migrate; retention is off
            assert result.stdout == "partitioned: nothing to do\n"
            monkeypatch.setenv("MARKET_INGESTOR__STORAGE__PARTITIONS_AHEAD_DAYS", "5")
            ahead = CliRunner().invoke(cli, ["db", "maintain"]).stdout
            assert "\nmarket_trades: created 2 partition(s): market_trades_p" in ahead, ahead
        assert CliRunner().invoke(cli, ["db", "maintain"]).stdout.endswith(": nothing to do\n")


def test_check_buckets_compares_klines_with_time_bucket_aggregates(
    db: Any, pg_server: PgServer, tmp_path: Path
) -> None:
    ts = trades("BKTUSDT", 30)  # 12:00:07 .. 12:03:30
    ts.append(Trade("binance", "BKTUSDT", "0", D("99"), D("1"), "sell", ts[-1].ts, T0))  # a tie at the last ns
    klines = list(aggregate(ts, KlineSettings(intervals=("1m",))))
    wrong = klines[2]
    wrong = type(wrong)(**{f: getattr(wrong, f) for f in wrong.__struct_fields__} | {"volume": D("1000")})
    path = lines_file(tmp_path / "bkt.jsonl", [*ts, klines[0], wrong, *klines[3:]])  # 12:01 is missing
    assert db("load", str(path)).exit_code == 0
    args = ["check-buckets", "-e", "binance", "-s", "BKTUSDT", "--from", "2024-02-29T12:00", "--to", "2024-02-29T13:00"]
    result = db(*args)
    if not pg_server.timescale:
        assert (
            result.exit_code == 1
            and "check-buckets needs TimescaleDB mode (this database: partitioned)" in result.stderr
        )
        return
    assert result.exit_code == 1, result.output
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert found == [
        {"minute": "2024-02-29T12:01:00Z", "kind": "missing", "fields": {}},
        {"minute": "2024-02-29T12:02:00Z", "kind": "different", "fields": {"volume": ["1000", str(klines[2].volume)]}},
    ]
    assert "4 minute(s) compared, 2 difference(s)" in result.stderr
    assert (
        db(
            "rebuild-klines",
            "-e",
            "binance",
            "-s",
            "BKTUSDT",
            "-i",
            "1m",
            "--from",
            "2024-02-29T12:00",
            "--to",
            "2024-02-29T13:00",
            "--repair",
        ).exit_code
        == 0
    )
    clean = db(*args)
    assert clean.exit_code == 0 and clean.stdout == "", clean.output


DAY = 86_400 * SECOND


@contextmanager
def database_of_its_own(pg_server: PgServer) -> Iterator[str]:
    """A fresh database (retention and maintain must not touch the module's shared one)."""

    name = f"test_dbcli_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_server.url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(pg_server.url, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def count_rows(url: str, table: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await conn.close()

    return asyncio.run(go())

"""``market-ingestor parse`` on the real recordings: the user's way to check a capture."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from market_ingestor.cli.main import cli

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "exchange-samples"


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"recorded sessions not found at {SAMPLES}")
    return SAMPLES


def run_parse(*args: str) -> list[dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, ["parse", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_binance_recording_prints_its_trades_exactly(samples):
    events = run_parse("-e", "binance", "--instruments", str(samples / "BINANCE.0"), str(samples / "BINANCE.ws.1.0"))
    trades = [e for e in events if e["type"] == "trade"]
    assert {(t["symbol"], t["qty"]) for t in trades} == {("NKNUSDT", "58.00000000"), ("LRCBTC", "177.00000000")}
    assert all(isinstance(t["price"], str) and Decimal(t["price"]) > 0 for t in trades)
    assert {e["type"] for e in events} == {"trade", "quote", "book_delta"}


def test_coinbase_recording_volumes_per_symbol(samples):
    events = run_parse("-e", "coinbase", str(samples / "COINBASE.ws.28.0"))
    volume: dict[str, Decimal] = {}
    for event in events:
        if event["type"] == "trade":
            volume[event["symbol"]] = volume.get(event["symbol"], Decimal(0)) + Decimal(event["qty"])
    assert volume["SKLUSD"] == Decimal("46731.3") and volume["DASHBTC"] == Decimal("15.755")


def test_an_unparsable_line_is_reported_with_its_number_and_the_rest_still_printed(tmp_path):
    frames = tmp_path / "frames.jsonl"
    good = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.5","q":"2","T":1,"m":true}}'
    frames.write_text(f"{good}\n{{broken\n")
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", "--strict", str(frames)])
    assert result.exit_code == 1
    assert "line 2:" in result.stderr
    assert json.loads(result.stdout)["trade_id"] == "7"


TRADE = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.5","q":"2","T":1,"m":true}}'
TRADE_2 = TRADE.replace('"t":7', '"t":8').replace('"p":"1.5"', '"p":"1.6"')


@pytest.mark.parametrize(("strict", "exit_code"), [(False, 0), (True, 1)])
def test_a_line_that_is_not_utf8_is_reported_and_the_lines_around_it_still_parse(tmp_path, strict, exit_code):
    frames = tmp_path / "frames.jsonl"
    frames.write_bytes(b"1633998512.1: " + TRADE.encode() + b'\n1633998512.2: {"stream":"\xff"}\n' + TRADE_2.encode())
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", *(["--strict"] if strict else []), str(frames)])
    assert result.exit_code == exit_code, result.output
    assert [json.loads(line)["trade_id"] for line in result.stdout.splitlines()] == ["7", "8"]
    assert result.stderr.splitlines() == [
        "line 2: not UTF-8 (invalid start byte: b'\\xff' at byte 26 of the line); skipped",
        "1 line(s) could not be read",
    ]
    assert "Traceback" not in result.output


# Per exchange: a frame of a channel the parser does not handle (and its channel), and protocol chatter.
UNHANDLED_AND_CHATTER = {
    "binance": ('{"stream":"btcusdt@kline_1m","data":{"e":"kline"}}', "kline_1m", '{"result":null,"id":1}'),
    "bybit": ('{"topic":"orderBookL2_25.BTCUSD","type":"snapshot","data":[{"price":"7800.00","symbol":"BTCUSD",'
              '"id":78000000,"side":"Buy","size":32547}],"cross_seq":1,"timestamp_e6":1583952000123456}',
              "orderBookL2_25", '{"success":true,"ret_msg":"pong","conn_id":"c1","op":"ping"}'),
    "coinbase": ('{"type":"done","product_id":"BTC-USD","reason":"filled"}', "done", '{"type":"heartbeat"}'),
    "kraken": ('[42,["1542057314.748456","1542057360.435743","3586.7","3586.7","3586.6","3586.6","3586.68894",'
               '"0.03373000",2],"ohlc-5","XBT/USD"]', "ohlc-5", '{"event":"heartbeat"}'),
    "okx": ('{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1","2","3","4","5","6","7","8","0"]]}',
            "candle1m", "pong"),
}  # fmt: skip


@pytest.mark.parametrize("exchange", sorted(UNHANDLED_AND_CHATTER))
def test_frames_not_turned_into_events_are_summed_up_per_channel_and_chatter_is_not(tmp_path, exchange):
    unhandled, channel, chatter = UNHANDLED_AND_CHATTER[exchange]
    frames = tmp_path / "frames.jsonl"
    frames.write_text(f"{chatter}\n{unhandled}\n{chatter}\n{unhandled}\n")
    result = CliRunner().invoke(cli, ["parse", "-e", exchange, str(frames)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "2 frame(s) not turned into events:",
        f"  {exchange} {channel}: 2 unhandled (a channel or message type the parser does not handle), first at line 2",
    ]
    assert CliRunner().invoke(cli, ["parse", "-e", exchange, "--strict", str(frames)]).exit_code == 1

    frames.write_text(f"{chatter}\n{chatter}\n")
    chatter_only = CliRunner().invoke(cli, ["parse", "-e", exchange, "--strict", str(frames)])
    assert (chatter_only.exit_code, chatter_only.stdout, chatter_only.stderr) == (0, "", "")


def test_recordings_report_what_they_hold_besides_events(samples):
    def stderr(exchange: str, listing: str, session: str) -> list[str]:
        args = ["parse", "-e", exchange, "--instruments", str(samples / listing), str(samples / session)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        return result.stderr.splitlines()

    unhandled = "unhandled (a channel or message type the parser does not handle)"
    assert stderr("binance", "BINANCE.0", "BINANCE.ws.1.0") == [
        "2 frame(s) not turned into events:",
        f"  binance kline_1m: 2 {unhandled}, first at line 111",
    ]
    assert stderr("coinbase", "COINBASE.0", "COINBASE.ws.28.0") == [
        "117 frame(s) not turned into events:",
        f"  coinbase last_match: 10 {unhandled}, first at line 11",
        "  coinbase ticker: 107 incomplete (no quote: best bid/ask or their sizes missing), first at line 9",
    ]
    for exchange, listing, session in (
        ("okx", "OKX.0", "OKX.ws.1.0"),
        ("kraken", "KRAKEN.0", "KRAKEN.ws.48.0"),
        ("kraken", "KRAKEN.0", "KRAKEN.ws.50.0"),
    ):
        assert stderr(exchange, listing, session) == [], session


def test_kraken_v1_ticker_and_spread_come_out_as_quotes(tmp_path):
    frames = tmp_path / "kraken.txt"
    ticker = ('[340,{"a":["5525.40000",1,"1.000"],"b":["5525.10000",0,"0.50000000"],"c":["5525.10000","0.00398963"],'
              '"v":["2634.11501494","3591.17907851"],"p":["5631.44067","5653.78939"],"t":[11493,16267],'
              '"l":["5505.00000","5505.00000"],"h":["5783.00000","5783.00000"],"o":["5760.70000","5763.40000"]},'
              '"ticker","XBT/USD"]')  # fmt: skip
    spread = '[341,["5698.40000","5700.00000","1542057299.545897","1.01234567","0.98765432"],"spread","XBT/EUR"]'
    frames.write_text(f"1542057300.000001: {ticker}\n1542057300.5: {spread}\n")
    result = CliRunner().invoke(cli, ["parse", "-e", "kraken", "--strict", str(frames)])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"type": "quote", "exchange": "kraken", "symbol": "BTCUSD", "bid_price": "5525.10000", "bid_qty": "0.50000000",
         "ask_price": "5525.40000", "ask_qty": "1.000", "ts": 1542057300000001000, "recv_ts": 1542057300000001000,
         "seq": None},
        {"type": "quote", "exchange": "kraken", "symbol": "BTCEUR", "bid_price": "5698.40000", "bid_qty": "1.01234567",
         "ask_price": "5700.00000", "ask_qty": "0.98765432", "ts": 1542057299545897000, "recv_ts": 1542057300500000000,
         "seq": None},
    ]  # fmt: skip


def test_a_bad_byte_on_stdin_is_reported_the_same_way():
    data = TRADE.encode() + b"\n\xc3(\n" + TRADE_2.encode() + b"\n"
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", "-"], input=data)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["trade_id"] for line in result.stdout.splitlines()] == ["7", "8"]
    assert result.stderr.startswith("line 2: not UTF-8 (invalid continuation byte: b'\\xc3' at byte 1 of the line)")


def test_zero_and_tiny_amounts_come_out_with_the_exchanges_digits(tmp_path):
    """A removed level's "0.00000000" and a trade of "0.00000010" are printed as sent, not as 0E-8 / 1.0E-7."""
    frames = tmp_path / "frames.jsonl"
    trade = (
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"64000.01000000",'
        '"q":"0.00000010","T":1,"m":false}}'
    )
    depth = (
        '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":6,'
        '"b":[["64000.00000000","0.00000000"],["63999.99000000","0"]],"a":[["64000.02000000","0.000000010"]]}}'
    )
    frames.write_text(f"{trade}\n{depth}\n")
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", "--strict", str(frames)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert '"price":"64000.01000000","qty":"0.00000010"' in lines[0]
    assert '"bids":[["64000.00000000","0.00000000"],["63999.99000000","0"]]' in lines[1]
    assert '"asks":[["64000.02000000","0.000000010"]]' in lines[1]
    assert [json.loads(line)["type"] for line in lines] == ["trade", "book_delta"]


def test_an_exchanges_exponent_form_is_accepted_exactly_and_printed_in_plain_digits(tmp_path):
    frames = tmp_path / "frames.jsonl"
    frames.write_text(
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":8,"p":"6.4E+4","q":"1E-8","T":1,'
        '"m":false}}\n'
    )
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", "--strict", str(frames)])
    assert result.exit_code == 0, result.output
    assert '"price":"64000","qty":"0.00000001"' in result.stdout

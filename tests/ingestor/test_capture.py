import io

from market_ingestor.ingestor.capture import CaptureWriter, ns_text, parse_line, read_session


def test_each_line_kind_of_the_recorded_format_is_read():
    lines = [
        "wss://x/stream?streams=a@trade <-> 1633998511.159679",
        'wss://x/ws <- 1700000001.020616: {"op":"subscribe"}',
        '1700000002.0633569: {"stream":"a@trade","data":{}}',
        'https://x/api -> 1633998511.132921: {"symbols":[]}',
        'configuration: {"log":{}}',
        '{"plain":"jsonl"}',
        "",
    ]
    records = list(read_session(lines))
    assert [r.kind for r in records] == ["open", "sent", "received", "rest", "configuration", "received"]
    assert records[2].recv_ts_ns == 1_700_000_002_063_356_900
    assert records[1].url == "wss://x/ws" and records[1].payload == '{"op":"subscribe"}'
    assert records[5].payload == '{"plain":"jsonl"}' and records[5].ts is None


def test_a_capture_file_reads_back_frame_for_frame_with_exact_times(tmp_path):
    path = tmp_path / "cap.txt"
    writer = CaptureWriter(path)
    writer.write("wss://a", '{"n":1}', 1_700_000_000_123_456_789)
    writer.write("wss://a", b'{"n":\n2}', 1_700_000_000_223_456_789)
    writer.close()
    records = [r for r in read_session(path) if r.kind == "received"]
    assert [r.payload for r in records] == ['{"n":1}', '{"n": 2}']
    assert [r.recv_ts_ns for r in records] == [1_700_000_000_123_456_789, 1_700_000_000_223_456_789]
    assert ns_text(5) == "0.000000005"
    assert parse_line(io.StringIO(path.read_text()).readline()).kind == "open"

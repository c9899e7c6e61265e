"""The chaos run (bench/chaos.py) in short: the whole pipeline on the dev stack, every fault kind of its schedule
once, and an accounting that must come out clean (issue 13), on Kafka and on NATS JetStream. It stops and starts
the dev stack's own PostgreSQL and bus server (Kafka broker, NATS server), so it needs them local, not external.

On NATS two workers share the shards: a kill or the pause (longer than the lease TTL) moves the shards of one
to the other and back. It found the sink exiting when JetStream answered a fetch with 503 while the server shut
down, both workers exiting when they could not make their stream consumers again during the outage, and ingest
exiting (trades lost) when the NATS client's reconnect buffer overflowed; each fixed, with a test of its own
(docs/benchmarks.md). Still failing in some runs (1 of 3 after the fixes): the push clients get ``dropped``
notices (the gateway replaced or dropped updates for a client behind), not yet explained; a longer run
(bench/chaos.py --minutes 10) also shows the resumed worker's kline stage not moving its shards on after the pause.

One worker, at least once. Two workers at least once (standby replicas 1; the worker kill and the pause move
partitions between them) found agents seeking and caching partitions that had just been revoked, and a batch
ending between a revocation and the next assignment committing offsets of instruments the revocation had
forgotten (trades lost from klines, the likely cause of an earlier run's "82 indicator values wrong or missing");
fixed in ``streams/app.py``, ``streams/indicators.py``, ``streams/outputs.py`` and
``bus/faust/internals.seek_back``. Since, with two workers this test's configuration passed 3 of 5 runs: every
stored trade, kline and value right in all five, but once the push gateway had dropped updates to its clients
(load average 13) and once a check not recorded failed; switch to ``workers=2`` once that is explained. Exactly
once (the bench's default) also stores everything right now; a worker paused past the session timeout comes back
fenced, which it now handles and goes on (docs/faust.md, "Revocations"). ``bench/chaos.py --workers 2`` shows them.

A broker that takes longer than ``bus.kafka.request_timeout_ms`` (30 s) to stop and start again (it does on a loaded
2-core machine) no longer costs trades: the Kafka publisher keeps and retries its batches (checked on its own, with
a 2 s timeout, by tests/ingestor/test_broker_outage.py), so this run keeps the default timeout.

Where ``prometheus`` is installed, the run's own Prometheus scrapes every service and the recovery of the worker
and the sink is read from it too (consumer lag back to 0, bench/chaos_prometheus.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos import SCHEDULE, Options, chaos, print_report
from market_ingestor.devstack import StackInfo

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


@pytest.mark.parametrize(
    ("bus", "workers"),
    [pytest.param("kafka", 1, marks=pytest.mark.kafka), pytest.param("nats", 2, marks=pytest.mark.nats)],
)
async def test_every_fault_once_loses_nothing_and_every_user_sees_the_stored_state(
    bus: str,
    workers: int,
    dev_stack: StackInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    external = dev_stack.kafka_kind == "external" if bus == "kafka" else bool(os.environ.get("NATS_URL"))
    if external or os.environ.get("DATABASE_URL"):
        pytest.skip("the chaos run stops and starts the dev stack's own servers; these are external")
    options = Options(
        minutes=6,
        faults=len(SCHEDULE),
        min_load_s=200,  # at least three closed minutes per instrument: sma_3 and rsi_2 have values to check
        fault_every_s=4,
        warmup_s=15,
        rate=200,
        drop_every_s=30,
        outage_s=5,
        request_timeout_ms=120_000 if bus == "nats" else 0,  # NATS: a publisher waits out the outage
        workers=workers,
        bus=bus,
        guarantee="at_least_once",
        workdir=str(tmp_path),
    )
    for bus_logger in ("aiokafka", "nats"):  # the bus is a fault target: its absence is expected
        caplog.set_level(logging.CRITICAL, logger=bus_logger)
    report = await chaos(options)
    print_report(report)
    table = capsys.readouterr().out
    with capsys.disabled():  # the run's table in the test log, passed or not
        print(table)
    scheduled = {(kind, bus if target == "bus" else target) for kind, target in SCHEDULE}
    assert {(f.kind, f.target.split("-")[0]) for f in report.faults} == scheduled, table
    assert report.ok, table
    # Each measure is there, not an accounting of nothing.
    assert report.trades.owed > 10_000 and report.trades.stored >= report.trades.owed, table
    assert report.truth.checked >= 10 and report.users.klines_checked >= 10, table
    assert report.users.indicators_checked > 0 and report.dead_letters_found > 0, table
    assert all(f.recovered for f in report.faults), table
    if shutil.which("prometheus"):  # recovery read from Prometheus too: consumer lag back to 0
        by_prometheus = {name for f in report.faults for name in f.caught_up_s if name.endswith("by prometheus")}
        assert by_prometheus == {"worker by prometheus", "sink by prometheus"}, table

"""The chaos run (bench/chaos.py) in short: the whole pipeline on the dev stack, every fault kind of its schedule
once, and an accounting that must come out clean (issue 13), on Kafka and on NATS JetStream. It stops and starts
the dev stack's own PostgreSQL and bus server (Kafka broker, NATS server), so it needs them local, not external.

On NATS two workers share the shards: a kill or the pause (longer than the lease TTL) moves the shards of one
to the other and back. It found the sink exiting when JetStream answered a fetch with 503 while the server shut
down, both workers exiting when they could not make their stream consumers again during the outage, and ingest
exiting (trades lost) when the NATS client's reconnect buffer overflowed; each fixed, with a test of its own
(docs/benchmarks.md). Later fixed too: the push clients' ``dropped`` notices (the gateway sent its read-back
records as live updates to clients that reconnected the moment it listened; it now listens once the read-back is
in) and a kline stage held after the NATS stop (the publisher's waits on a lost connection; the timer closing quiet
windows past the stage's last read of the stream's end), each with a test (docs/benchmarks.md, "On NATS
JetStream").

On Kafka two workers run exactly once with standby replicas 1, as issue 13 asks. The worker kill and the pause
(longer than the session timeout) move partitions between them, and the paused worker comes back fenced, which it
handles and goes on (docs/faust.md, "Revocations"). Two workers at least once found agents seeking and caching
partitions that had just been revoked, and a batch ending between a revocation and the next assignment committing
offsets of instruments the revocation had forgotten (trades lost from klines); fixed in ``streams/app.py``,
``streams/indicators.py``, ``streams/outputs.py`` and ``bus/faust/internals.seek_back``. Exactly once found a worker
taking over partitions that never closed the windows of their quiet instruments (the recovery callback took up
nothing on a member that is not the group's leader); a producer whose sender died at the broker stop taken for a
fence with no rebalance to follow (the worker now asks its group for one after 30 s); a batch of one generation
processed after the next assignment and a table recovery callback of the previous generation, either of which
leaves a state behind its committed input offsets (seen once: a closed kline stored with 814 of its 977 trades);
and the group answering that rejoin with the same generation, which left the worker fenced for good ("stop kafka:
worker NOT RECOVERED", about 1 run in 7). Each is fixed with a test of its own (docs/faust.md, "Revocations").
Once more in CI a closed kline lacked trades its committed input covered (692 of 820, the broker away 27.5 s), the
way not seen: the worker now checks each partition's local rows against its committed input (an input mark saved
with every checkpoint) and rebuilds a partition found behind (docs/faust.md, "Local rows behind the committed
input").
A push gateway that drops updates to a client behind (seen once with two workers at least once, load average 13)
would also fail it.

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
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos import SCHEDULE, Options, chaos, print_report
from chaos_services import stop_abandoned
from market_ingestor.devstack import StackInfo

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def no_service_outlives_the_run() -> Iterator[None]:
    """pytest's timeout leaves the run's coroutine pending, its own cleanup never runs: its services are stopped
    here, so they do not run on into the next test on the same dev stack."""
    yield
    left = stop_abandoned()
    if left:
        print(f"stopped what the run left running: {', '.join(left)}")


@pytest.mark.parametrize(
    ("bus", "workers", "guarantee"),
    [
        pytest.param("kafka", 2, "exactly_once", marks=pytest.mark.kafka),
        pytest.param("nats", 2, "at_least_once", marks=pytest.mark.nats),  # NATS has no exactly_once
    ],
)
async def test_every_fault_once_loses_nothing_and_every_user_sees_the_stored_state(
    bus: str,
    workers: int,
    guarantee: str,
    dev_stack: StackInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    external = dev_stack.kafka_kind == "external" if bus == "kafka" else bool(os.environ.get("NATS_URL"))
    if external or os.environ.get("DATABASE_URL"):
        pytest.skip("the chaos run stops and starts the dev stack's own servers; these are external")
    if guarantee == "exactly_once" and not dev_stack.supports_transactions:
        pytest.skip(f"{dev_stack.kafka_kind} has no Kafka transactions")
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
        guarantee=guarantee,
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

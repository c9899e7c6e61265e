"""Our Faust app class: faust-streaming 0.15.3 with the consumer changes our agents need.

:class:`StreamApp` skips the periodic commit after the final one under ``exactly_once`` (it crashed the worker at
shutdown), lets apps read ``read_committed``, shortens the fetch long-poll, bounds the intake
(:data:`BOUNDED_INTAKE`) and stops the worker when an agent raises (Faust never runs a crashed agent again). Why,
and what each relies on in Faust: docs/faust.md; the private calls live in ``internals.py`` beside it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import faust
from aiokafka.errors import ProducerFenced

from market_ingestor.bus.faust.internals import AgentErrorApp, TableManager, Transport
from market_ingestor.config import KafkaConfig

# Bounded intake while draining a backlog: without a limit one poll decodes everything fetched (1 MB per partition:
# tens of thousands of records held at once). Measured on the kline worker: ~100 MB more peak RSS and half the
# throughput. The fetch size is per partition; the broker still returns a larger first batch whole.
# Records are batches of events (docs/topics.md), up to bus.batch.max_bytes each: the stream buffer holds records.
BOUNDED_INTAKE = {
    "broker_max_poll_records": 500,
    "consumer_max_fetch_size": 256 * 1024,
    "stream_buffer_maxsize": 64,
}
FETCH_MAX_WAIT_MS = 20  # aiokafka fetches once per broker at a time: a long poll would hold back busy partitions

log = logging.getLogger(__name__)


class StreamApp(AgentErrorApp):
    def __init__(
        self, *args: Any, read_committed: bool = False, fetch_max_wait_ms: int | None = None, **kwargs: Any
    ) -> None:
        self.read_committed = read_committed
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.agent_failure: BaseException | None = None
        self.stop_on_agent_failure = False  # the stream worker sets it; its command then exits 1
        # Input topics whose partitions each have a transactional producer (internals.declare_transaction_source).
        self.transaction_sources: set[str] = set()
        super().__init__(*args, **kwargs)

    async def on_agent_failed(self, agent: Any, exc: BaseException) -> None:
        """Records the failure and stops the worker as SIGTERM would (graceful: the other agents stop, nothing
        more is committed for the failed one); the command then exits 1."""
        if not self.stop_on_agent_failure:
            log.critical("agent %s failed; Faust will not run it again", getattr(agent, "name", agent), exc_info=exc)
            return
        if self.agent_failure is None:
            self.agent_failure = exc
            log.critical(
                "agent %s failed: stopping the worker (exit 1) for its supervisor to restart it",
                getattr(agent, "name", agent),
                exc_info=exc,
            )
            signal.raise_signal(signal.SIGTERM)

    @classmethod
    def on_kafka(cls, app_id: str, kafka: KafkaConfig, **settings: Any) -> StreamApp:
        """One of our apps on ``kafka``: raw bytes in and out (msgspec decodes), no Faust web server, the topic
        layout and session timeout of the config, bounded intake, short long-polls; ``settings`` add or override
        Faust settings."""
        session_s = kafka.session_timeout_ms / 1000  # float-ok: a duration
        common: dict[str, Any] = {
            "broker": f"kafka://{kafka.bootstrap}",
            "topic_partitions": kafka.partitions,
            "topic_replication_factor": kafka.replication_factor,
            "key_serializer": "raw",
            "value_serializer": "raw",
            "web_enabled": False,
            # A killed member leaves the group after this, not Faust's 60 s default: its partitions move sooner.
            "broker_session_timeout": session_s,
            "broker_heartbeat_interval": session_s / 5,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            # Table recovery callbacks only for the current generation (bus/faust/internals.py, _Recovery).
            "TableManager": TableManager,
            **BOUNDED_INTAKE,
        }
        return cls(app_id, **{**common, **settings})

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


def faust_worker(app: faust.App, *services: Any, log_level: str) -> faust.Worker:
    """How our Faust services start: no banner, Faust's and mode's loggers through ours (``logs.py``, one format:
    ``override_logging=False``), and no terminal spinner (it writes cursor escapes into the output, a log file
    under ``up``)."""
    level = log_level.lower().replace("warning", "warn")
    worker = faust.Worker(app, *services, loglevel=level, quiet=True, override_logging=False)
    worker.spinner = None
    worker.loop.set_exception_handler(quiet_fenced_producers)
    return worker


def quiet_fenced_producers(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler of errors nobody took: a fence (``ProducerFenced``) left in a dropped producer's
    own futures (aiokafka's transaction manager sets it on futures only that producer awaits) is logged at INFO:
    the fence itself was handled and logged as a warning (``streams/outputs.py``), and an ERROR with a
    traceback per future, at garbage collection, read like a crash. Everything else goes to asyncio's default."""
    if isinstance(context.get("exception"), ProducerFenced) and "future" in context and "task" not in context:
        log.info("a fenced producer's result was not taken: %s", context.get("message"))
        return
    loop.default_exception_handler(context)

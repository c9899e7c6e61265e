"""Our Faust app class: faust-streaming 0.15.3 with the consumer changes our agents need.

- Shutdown under ``exactly_once``: at stop, Faust's consumer commits once more and ends every partition's
  transaction (``commit_and_end_transactions``), but its periodic commit task may still run after that; when events
  were acknowledged in between it commits into a transaction that no longer exists and the worker crashes on its
  way out (``IllegalOperation: Not in the middle of a transaction``, exit code 1). Events acknowledged after the
  final commit are delivered again after a restart, so that late commit is skipped.
- ``read_committed``: Faust picks the consumer's isolation level from ``in_transaction`` alone, so an
  ``at_least_once`` app would read records of aborted transactions (of an ``exactly_once`` worker that crashed).
  Apps that must not (the sink) set ``read_committed=True``.
- :meth:`StreamApp.on_kafka` holds the settings every app of ours shares, bounded intake (``BOUNDED_INTAKE``) among
  them.
- ``fetch_max_wait_ms``: aiokafka sends one fetch per broker at a time; a long poll for idle partitions (Faust
  asks for 1.5 s) holds back the refetch of the busy ones, which stalls a consumer for that long after each batch.
- An agent that raises: Faust 0.15.3 logs "Crashed" and never runs it again, while the process lives on and its
  partitions stay assigned to it: the worker would sit idle for good (seen with an exception injected into the
  kline agent). The stream worker stops instead (:meth:`StreamApp.on_agent_failed`), with
  :attr:`StreamApp.agent_failure` set: the command exits 1 and its supervisor restarts it, and a restart resumes
  from the last checkpoint.

Both consumer settings reach private attributes of Faust and aiokafka: they live in ``streams/faust_internals.py``.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from market_ingestor.config import KafkaConfig
from market_ingestor.streams.faust_internals import AgentErrorApp, Transport

# Bounded intake while draining a backlog: without a limit one poll decodes everything fetched (1 MB per partition:
# tens of thousands of records held at once). Measured on the kline worker: ~100 MB more peak RSS and half the
# throughput. The fetch size is per partition; the broker still returns a larger first batch whole.
# Records are batches of events (docs/topics.md), up to bus.batch.max_bytes each: the stream buffer holds records.
BOUNDED_INTAKE = {
    "broker_max_poll_records": 500,
    "consumer_max_fetch_size": 256 * 1024,
    "stream_buffer_maxsize": 64,
}
FETCH_MAX_WAIT_MS = 20  # see fetch_max_wait_ms above

log = logging.getLogger(__name__)


class StreamApp(AgentErrorApp):
    def __init__(
        self, *args: Any, read_committed: bool = False, fetch_max_wait_ms: int | None = None, **kwargs: Any
    ) -> None:
        self.read_committed = read_committed
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.agent_failure: BaseException | None = None
        self.stop_on_agent_failure = False  # the stream worker sets it; its command then exits 1
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
            **BOUNDED_INTAKE,
        }
        return cls(app_id, **{**common, **settings})

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)

"""Our Faust app class: faust-streaming 0.15.3 with the consumer changes our agents need.

- Shutdown under ``exactly_once``: at stop, Faust's consumer commits once more and ends every partition's
  transaction (``commit_and_end_transactions``), but its periodic commit task may still run after that; when events
  were acknowledged in between it commits into a transaction that no longer exists and the worker crashes on its
  way out (``IllegalOperation: Not in the middle of a transaction``, exit code 1). Events acknowledged after the
  final commit are delivered again after a restart, so that late commit is skipped.
- ``read_committed``: Faust picks the consumer's isolation level from ``in_transaction`` alone, so an
  ``at_least_once`` app would read records of aborted transactions (of an ``exactly_once`` worker that crashed).
  Apps that must not (the sink) set ``read_committed=True``.
- Bounded intake (``BOUNDED_INTAKE``) unless the app says otherwise.
- ``fetch_max_wait_ms``: aiokafka sends one fetch per broker at a time; a long poll for idle partitions (Faust
  asks for 1.5 s) holds back the refetch of the busy ones, which stalls a consumer for that long after each batch.

Both consumer settings are private attributes of Faust and aiokafka: check them on an upgrade.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

# Bounded intake while draining a backlog: without a limit one poll decodes everything fetched (1 MB per partition:
# tens of thousands of records held at once). Measured on the kline worker: ~100 MB more peak RSS and half the
# throughput. The fetch size is per partition; the broker still returns a larger first batch whole.
BOUNDED_INTAKE = {"broker_max_poll_records": 500, "consumer_max_fetch_size": 256 * 1024}


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer: Any = self.consumer
        app: Any = consumer.app
        saved = consumer.in_transaction
        consumer.in_transaction = saved or getattr(app, "read_committed", False)
        try:
            client = super()._create_worker_consumer(transport)
        finally:
            consumer.in_transaction = saved
        wait_ms = getattr(app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            client._fetch_max_wait_ms = wait_ms
        return client


class _Consumer(faust_aiokafka.Consumer):
    transactions_ended = False

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit_and_end_transactions(self) -> None:
        await super().commit_and_end_transactions()
        self.transactions_ended = True

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self.transactions_ended and self.in_transaction:
            return False
        return await super().commit(topics, start_new_transaction=start_new_transaction)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class StreamApp(faust.App):
    def __init__(
        self, *args: Any, read_committed: bool = False, fetch_max_wait_ms: int | None = None, **kwargs: Any
    ) -> None:
        self.read_committed = read_committed
        self.fetch_max_wait_ms = fetch_max_wait_ms
        for setting, value in BOUNDED_INTAKE.items():
            kwargs.setdefault(setting, value)
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def transactions_ended(app: faust.App) -> bool:
    """True once the worker's final commit has closed its transactions: nothing may be sent into them."""
    return bool(getattr(app.consumer, "transactions_ended", False))

"""Our Faust app class: faust-streaming 0.15.3 with the one change its shutdown under ``exactly_once`` needs.

At stop, Faust's consumer commits once more and ends every partition's transaction
(``commit_and_end_transactions``), but its periodic commit task may still run after that; when events were
acknowledged in between it commits into a transaction that no longer exists and the worker crashes on its way
out (``IllegalOperation: Not in the middle of a transaction``) with exit code 1. Events acknowledged after the final
commit are simply delivered again after a restart, so the late commit is skipped instead.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _Consumer(faust_aiokafka.Consumer):
    transactions_ended = False

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
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def transactions_ended(app: faust.App) -> bool:
    """True once the worker's final commit has closed its transactions: nothing may be sent into them."""
    return bool(getattr(app.consumer, "transactions_ended", False))

"""Every private attribute and undocumented call of faust-streaming and aiokafka that we use, in one place.

faust-streaming is pinned to the version these were read in (``TESTED_FAUST``), aiokafka held to 0.14; each use
below says why it is needed, and ``tests/bus/faust/test_internals.py`` fails naming the internal when an
upgrade changes it. Nothing outside this module touches a private name of either package. The table of what each
is for, the Faust behaviours they work around and how to upgrade: docs/faust.md.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import faust
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import IllegalStateError
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import TopicPartition
from faust.streams import _current_event  # the event whose partition a table write goes to
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import TransactionManager, ensure_TPset
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)

TESTED_FAUST = "0.15.3"


# --- the consumer ------------------------------------------------------------------------------------------------


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    # ``_create_worker_consumer`` builds the aiokafka consumer; Faust derives its isolation level from
    # ``in_transaction`` alone, so it is set for the call, and aiokafka's ``_fetch_max_wait_ms`` (no Faust setting
    # reaches it) is set on the result before it starts.
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
        note_skipped_offsets()
        return client

    # ``_highwaters`` is what table recovery measures the changelogs with. Under ``exactly_once`` Faust answers with
    # the last stable offset of the last fetch, which is unknown (None, taken as -1) until a partition was fetched
    # in the current generation, and every partition is paused at assignment: recovery then found nothing to read
    # (tables not restored) or a persisted offset "beyond the end" (ConsistencyError). ``end_offsets`` asks the
    # broker; a read_committed consumer gets the last stable offset, a read_uncommitted one the end.
    async def _highwaters(self, partitions: list[TP]) -> dict[TP, int]:
        consumer: Any = self._ensure_consumer()
        found = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in partitions])
        return {TP(tp.topic, tp.partition): offset for tp, offset in found.items()}


def assignment_number(group_generation: int, last: int) -> int:
    """The number of an assignment: the group's generation when it is new to this worker, else one more than the
    last number (the group answered a rejoin with the generation it had)."""
    return group_generation if group_generation > last else last + 1


class _RebalanceListener(faust_aiokafka.ConsumerRebalanceListener):
    # Faust numbers each assignment with the group's generation (``app.consumer_generation_id``): its streams skip
    # messages fetched under another number, its recovery and our writer key their state by it. A member that
    # rejoins a stable group without changing anything (``PartitionWriter.rejoin_if_stuck`` after a failed
    # producer no other member caused) gets the same generation and assignment back, so everything keyed by the
    # number took the new assignment for the old one: the writer stayed fenced for ever (the chaos run, broker
    # stopped). Every assignment gets a number of its own; nothing sends the number to the broker.
    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        thread: Any = self._thread
        app: Any = thread.app
        group_generation = thread._ensure_consumer()._coordinator.generation
        number = assignment_number(group_generation, app.consumer_generation_id)
        if number != group_generation:
            log.info("the group gave generation %d again; this assignment is number %d", group_generation, number)
        app.consumer_generation_id = number
        await thread.on_partitions_assigned(ensure_TPset(assigned), number)


class _Consumer(faust_aiokafka.Consumer):
    RebalanceListener = _RebalanceListener
    transactions_ended = False

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:  # the hook for our thread class
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit_and_end_transactions(self) -> None:
        await super().commit_and_end_transactions()
        # Faust calls it at every revocation too (``wait_empty``, with ``stream_wait_empty`` on by default), and the
        # assignment then begins new transactions: only the stopping consumer's call is the final one. (Taken for
        # final at a rebalance, it made every writer drop its input for good.)
        if self.should_stop:
            self.transactions_ended = True

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self.transactions_ended and self.in_transaction:
            return False  # the periodic commit after the final one: there is no transaction left to commit into
        return await super().commit(topics, start_new_transaction=start_new_transaction)


class _TransactionManager(TransactionManager):
    # At an assignment Faust begins a transaction for each assigned partition, but keeps the producer it has for a
    # partition it had before (``begin_transaction`` on it then fails: "IN_TRANSACTION -> IN_TRANSACTION", logged).
    # After this worker was paused past its session timeout, that producer may have been fenced at the broker by
    # the member that held the partition meanwhile without knowing it yet: the first send of the new generation
    # fails, and the writer, taking the fence for a loss of the assignment, would wait for a generation that does
    # not come. So every assigned partition gets a new producer (new epoch: the broker aborts what the old one left
    # open, nothing once a revocation has committed its work), as Kafka Streams' does when a task moves.
    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any) -> None:
        for tid in sorted(self._tps_to_transactional_ids(assigned)):
            await self.producer.stop_transaction(tid)  # pops and stops it, if there is one
        await super().on_rebalance(assigned, revoked, newly_assigned)

    # Faust gives a producer to each (topic group, partition): its assignor groups topics by partition count, so
    # ``market.trades`` and ``market.klines`` partition N shared one producer and one open transaction, and one
    # agent's commit committed the other's outputs ahead of that agent's own state and offsets (after a kill -9
    # they came again). Here each partition of a declared input topic (``declare_transaction_source``) has its own
    # (``transactional_id``); table changelogs and undeclared topics none: nothing is sent with their ids.
    def _tps_to_transactional_ids(self, tps: Any) -> set[str]:
        app: Any = self.app
        sources: set[str] = getattr(app, "transaction_sources", set())
        if not sources:
            return set(super()._tps_to_transactional_ids(tps))
        return {transactional_id(app, tp) for tp in tps if tp.topic in sources and not app.assignor.is_standby(tp)}


def _usable(producer: Any) -> bool:
    """Whether an aiokafka transactional producer can still begin or commit (``_txn_manager.state``)."""
    state = producer._txn_manager.state
    return state not in (TransactionState.FATAL_ERROR, TransactionState.ABORTABLE_ERROR)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with our consumer and transaction manager (``App._new_transport`` returns it)."""

    Consumer = _Consumer
    TransactionManager = _TransactionManager


def transactions_ended(app: faust.App) -> bool:
    """True once the worker's final commit has closed its transactions: nothing may be sent into them."""
    return bool(getattr(app.consumer, "transactions_ended", False))


# --- agent errors ------------------------------------------------------------------------------------------------


class AgentErrorApp(faust.App):
    """``App.agent`` gives every agent ``on_error=self._on_agent_error`` (no setting or argument replaces it):
    after Faust's own handling, :meth:`on_agent_failed` is called (our apps stop the worker there)."""

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        await super()._on_agent_error(agent, exc)
        await self.on_agent_failed(agent, exc)

    async def on_agent_failed(self, agent: Any, exc: BaseException) -> None:
        """An agent raised ``exc``: Faust will not run it again."""


# --- commits -----------------------------------------------------------------------------------------------------


async def commit_offsets(app: faust.App, offsets: dict[TP, int]) -> bool:
    """Commits ``offsets`` (next offset to read) outside a transaction: ``Consumer._commit`` is the call Faust's
    own commits end in; it drops partitions no longer assigned. False if nothing was committed."""
    consumer: Any = app.consumer
    return bool(await consumer._commit(offsets))


async def commit_transaction(app: faust.App, offsets: dict[TP, int]) -> None:
    """Commits the transaction of each source partition with its input ``offsets`` and opens the next one, with
    the producer's ``commit_transactions`` (offsets as aiokafka's TopicPartition): Faust's
    ``TransactionManager.commit``, which calls it, crashes the app on ``ProducerFenced``; here it is raised to the
    caller (``PartitionWriter`` handles a fence)."""
    by_transaction: dict[str, dict[Any, int]] = {}
    for tp, offset in offsets.items():
        by_transaction.setdefault(transactional_id(app, tp), {})[TopicPartition(tp.topic, tp.partition)] = offset
    await app.producer.commit_transactions(by_transaction, app.conf.id, start_new_transaction=True)


def committed_offset(app: faust.App, tp: TP) -> int | None:
    """What Faust found committed for ``tp`` when it was assigned (``Consumer._committed_offset``); None when
    unknown, -1 when nothing is committed."""
    consumer: Any = app.consumer
    offset = consumer._committed_offset.get(tp)
    return None if offset is None else int(offset)


def transactional_id(app: faust.App, source: TP) -> str:
    """The transactional id of the producer of ``source`` (a partition of a declared input topic): every output,
    table row and input offset derived from it commits in that producer's transaction (our
    ``_TransactionManager`` starts one per such partition)."""
    return f"{app.conf.id}-{source.topic}-{source.partition}"


def declare_transaction_source(app: faust.App, topic: str) -> None:
    """Under ``exactly_once``, each partition of ``topic`` gets a transactional producer of its own."""
    sources: set[str] | None = getattr(app, "transaction_sources", None)
    if sources is None:
        sources = set()
        app.transaction_sources = sources  # type: ignore[attr-defined]
    sources.add(topic)


# --- seeks -------------------------------------------------------------------------------------------------------


async def seek_back(app: faust.App, offsets: dict[TP, int]) -> None:
    """Seeks partitions in the consumer's own thread (aiokafka is not thread-safe) and waits for it:
    ``Consumer.seek_wait`` is undocumented. Partitions no longer assigned are left alone (their new owner reads
    them from the committed offset): aiokafka refuses to seek them, and a rebalance may revoke one between the
    check and the seek, which is let go the same way."""
    consumer: Any = app.consumer
    assigned = consumer.assignment()
    offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
    if not offsets:
        return
    try:
        await consumer.seek_wait(offsets)
    except IllegalStateError as exc:  # "No current assignment for partition": revoked meanwhile
        log.info("seek of a partition revoked meanwhile skipped", extra={"error": str(exc)})


async def committed_at_broker(app: faust.App, tps: Iterable[TP]) -> dict[TP, int]:
    """The group's committed offset of each partition as the broker has it now (aiokafka's public ``committed``,
    called in the consumer's own thread through Faust's undocumented ``Consumer._thread.call_thread``); partitions
    with nothing committed are left out."""
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    client = thread._ensure_consumer()
    found: dict[TP, int] = {}
    for tp in tps:
        offset = await thread.call_thread(client.committed, TopicPartition(tp.topic, tp.partition))
        if offset is not None and offset >= 0:
            found[tp] = int(offset)
    return found


async def request_rejoin(app: faust.App) -> None:
    """Makes the consumer rejoin its group at its next poll, i.e. a rebalance (aiokafka's
    ``GroupCoordinator.request_rejoin`` through the undocumented ``AIOKafkaConsumer._coordinator``, in the
    consumer's own thread through Faust's ``Consumer._thread``): Faust offers no call for it."""
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    client = thread._ensure_consumer()

    async def rejoin() -> None:
        client._coordinator.request_rejoin()

    await thread.call_thread(rejoin)


async def log_start_offsets(app: faust.App, tps: Iterable[TP]) -> dict[TP, int]:
    """The first offset in the log of each partition (``Consumer.earliest_offsets``, undocumented)."""
    found = await app.consumer.earliest_offsets(*(TopicPartition(*tp) for tp in tps))
    return {TP(tp.topic, tp.partition): offset for tp, offset in found.items()}


# --- tables ------------------------------------------------------------------------------------------------------


class _PartitionEvent:
    """What Faust's RocksDB store reads from the "current event" when it writes: the partition of the row."""

    class _Message:
        def __init__(self, tp: TP) -> None:
            self.tp, self.topic, self.partition = tp, tp.topic, tp.partition

    def __init__(self, tp: TP) -> None:
        self.message = self._Message(tp)


def table_store(table: Any) -> Any:
    """The table's store (``Table.data``): written directly, so Faust sends no changelog record of its own."""
    return table.data


def write_row(table: Any, key: bytes, value: bytes, source: TP) -> None:
    """Writes a row to the table's local store in the partition of ``source``: the store takes the partition
    from ``faust.streams._current_event``, which is set to a stand-in for the call."""
    stand_in = _PartitionEvent(source)
    token = _current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]
    try:
        table.data[key] = value
    finally:
        _current_event.reset(token)


def persist_offset(store: Any, changelog: TP, offset: int) -> None:
    """Records the changelog offset a restart replays from (``Store.set_persisted_offset``)."""
    store.set_persisted_offset(changelog, offset)


def recovery_completed(app: faust.App) -> bool:
    """True once the tables' recovery has finished (``TableManager.recovery.completed``)."""
    return bool(app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]


class _Recovery(Recovery):
    # ``on_recovery_completed(generation_id)`` calls the tables' recovery callbacks first and only then checks that
    # no rebalance came meanwhile. A recovery can end after the next generation's assignment (its end is not tied
    # to the rebalance: the reads stop when the changelogs' ends are reached or after the aborted-transaction
    # check), and before that generation's recovery has started: the callbacks then ran for the new assignment and
    # loaded rows of partitions not recovered yet (a standby's lagging copy, an unfinished read), which the agents
    # kept. Here the callbacks run only for the current generation, and ``recovered_generation`` tells them which
    # generation's recovery reached them.
    # ``sought_generation``: the generation whose recovery went on to seek the input partitions to their committed
    # offsets (Faust's ``completed`` event is set once, at the first recovery, and never cleared).
    recovered_generation = -1
    sought_generation = -1

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        if generation_id != self.app.consumer_generation_id:
            log.info(
                "table recovery of generation %d ended after generation %d was assigned: its callbacks are left "
                "to the recovery of the new assignment",
                generation_id,
                self.app.consumer_generation_id,
            )
            return
        self.recovered_generation = generation_id
        await super().on_recovery_completed(generation_id)
        if generation_id == self.app.consumer_generation_id:
            self.sought_generation = generation_id


class TableManager(FaustTableManager):
    """Faust's table manager with our recovery service (``TableManager.recovery``, ``_recovery``); the app's
    ``TableManager`` setting names it."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


def recovered_generation(app: faust.App) -> int:
    """The consumer generation whose table recovery last reached the recovery callbacks (-1: none yet, or the
    app does not use our :class:`TableManager`)."""
    return int(getattr(app.tables.recovery, "recovered_generation", -1))  # type: ignore[attr-defined]


def last_fetch_s(app: faust.App, tp: TP) -> float | None:  # float-ok: wall-clock seconds
    """When the consumer last had a fetch answer for ``tp`` (wall clock, seconds): aiokafka's
    ``AIOKafkaConsumer.last_poll_timestamp`` (ms, set with the high watermark by every fetch response) through Faust's
    private consumer thread (``Consumer._thread``). None before the first answer, or when ``tp`` is not assigned."""
    client = app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
    try:
        stamp = client.last_poll_timestamp(TopicPartition(tp.topic, tp.partition))
    except AssertionError:  # aiokafka asserts that the partition is assigned
        return None
    return None if stamp is None else stamp / 1000


def inputs_sought(app: faust.App) -> bool:
    """Whether the recovery of the current generation has sought the input partitions to their committed offsets
    (so ``Consumer._committed_offset`` is the current generation's)."""
    sought = getattr(app.tables.recovery, "sought_generation", -1)  # type: ignore[attr-defined]
    return bool(sought == app.consumer_generation_id)


# --- offsets the consumer skipped ---------------------------------------------------------------------------------

# aiokafka's ``PartitionRecords._unpack_records`` (the generator a fetch answer's records come out of, in the consumer
# thread) passes over control batches (the marker every transaction commit or abort writes: one offset per
# transaction and partition) and, under read_committed, aborted batches, moving its ``next_fetch_offset`` past them;
# no consumer ever sees those offsets. InputSequence took each such gap for records Faust lost and sought back over it
# (on market.klines under exactly_once: a seek and a second fetch per transaction and partition, and a stall
# warning per partition whose log ends with a marker). The gaps are noted here as they are passed over, per
# partition, the newest SKIPPED_RANGES_KEPT of them.
SKIPPED_RANGES_KEPT = 256
_skipped: dict[tuple[str, int], deque[tuple[int, int]]] = {}
_unpack_records = PartitionRecords._unpack_records


def _unpack_records_noting_skips(self: Any) -> Iterator[Any]:
    key = (self._tp.topic, self._tp.partition)
    expected = self.next_fetch_offset  # the fetch's start: the offset after what came before
    for record in _unpack_records(self):
        if record.offset > expected:
            _note_skipped(key, expected, record.offset)
        expected = record.offset + 1
        yield record
    if self.next_fetch_offset > expected:  # skipped after the last record (a marker ending the log)
        _note_skipped(key, expected, self.next_fetch_offset)


def _note_skipped(key: tuple[str, int], start: int, end: int) -> None:
    ranges = _skipped.get(key)
    if ranges is None:
        ranges = _skipped[key] = deque(maxlen=SKIPPED_RANGES_KEPT)
    ranges.append((start, end))


def note_skipped_offsets() -> None:
    """From now on, this process's aiokafka consumers note the offsets they pass over (:func:`skipped`)."""
    PartitionRecords._unpack_records = _unpack_records_noting_skips


def skipped(tp: TP, start: int, end: int) -> bool:
    """Whether the consumer passed over every offset from ``start`` to ``end`` (exclusive) of ``tp`` with nothing to
    deliver there (transaction markers, aborted batches, compacted records): no record of them can come."""
    ranges = sorted(tuple(_skipped.get((tp.topic, tp.partition), ())))  # a copy: the consumer thread appends
    position = start
    for first, after in ranges:
        if first <= position < after:
            position = after
    return position >= end


# --- the producer ------------------------------------------------------------------------------------------------


async def producer_partitions(app: faust.App, topic: str) -> list[int]:
    """The partitions of ``topic`` from the producer's metadata: Faust keeps its aiokafka producer private
    (``Producer._ensure_producer``); ``partitions_for`` waits for the metadata of a topic new to it."""
    producer: Any = app.producer
    return sorted(await producer._ensure_producer().partitions_for(topic))


def transaction_fenced(app: faust.App, transactional_id: str) -> bool:
    """Whether the producer of ``transactional_id`` can no longer commit: Faust drops the producer whose begin,
    commit or abort found it fenced (``Producer._transaction_producers``), and aiokafka's transaction manager
    (``_txn_manager``) holds a fenced producer in its fatal state, where every send fails."""
    producer = app.producer._transaction_producers.get(transactional_id)  # type: ignore[attr-defined]
    return producer is None or not _usable(producer)


def discard_partition(app: faust.App, table: Any, partition: int) -> None:
    """Removes every local row of ``table`` in ``partition`` and its persisted changelog offset, and makes table
    recovery forget where it was in that changelog partition (``Recovery.revoke``): when the partition is
    assigned again, active or standby, its rows are rebuilt from the start of the committed changelog. For rows
    written in a transaction that was aborted (``Store._visible_keys``, ``_db_for_partition``, ``offset_key``,
    ``_key_index``: the RocksDB store's own key lookups cache which partition a key is in)."""
    store = table.data
    db = store._db_for_partition(partition)
    for key in list(store._visible_keys(db)):
        db.delete(key)
    db.delete(store.offset_key)
    store._key_index.clear()
    app.tables.recovery.revoke(TP(table.changelog_topic.get_topic_name(), partition))  # type: ignore[attr-defined]


# --- aiokafka's producer, also used without Faust (bus/kafka.py) ------------------------------------------------


def never_expire_batches(producer: Any) -> None:
    """aiokafka fails a batch unsent ``request_timeout_ms`` after taking it (its accumulator's ``_batch_ttl``),
    e.g. while a restarted broker has no partition leader yet, although it may already have been written; our
    publisher relies on the idempotent producer's own retries instead, and gives up only in ``stop()``."""
    producer._message_accumulator._batch_ttl = math.inf


async def close_producer_now(producer: Any, error: Exception) -> None:
    """Stops an aiokafka producer without waiting for a broker that is away (``stop()`` waits for every batch it
    holds, which it may retry for ever): its sender (``_sender``) is closed first, so the requests under way end
    within the request timeout, then the batches it still holds fail with ``error`` (``fail_all``)."""
    if producer._sender is not None:
        await producer._sender.close()
    producer._message_accumulator.fail_all(error)
    await producer.stop()

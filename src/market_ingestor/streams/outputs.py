"""Sends and table writes that belong to one source partition, with the processing guarantee we promise.

In faust-streaming 0.15.3 neither ``Topic.send`` nor ``table[key] = value`` joins the Kafka transaction under
``exactly_once`` (docs/faust.md, "Transactions do not cover agent sends"): here every output and changelog record
is sent with the transactional id of the partition it derives from, and after an unclean stop the local tables
are rebuilt from the committed changelog (:func:`prepare_data_dir`). Under ``at_least_once``
:meth:`PartitionWriter.flush` waits for the outputs' acknowledgements before the state that says "these trades are
done" is written: a crash can repeat an output, never lose one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import ProducerFenced
from aiokafka.partitioner import murmur2
from faust.types import TP

from market_ingestor.bus.faust import internals as faust_internals
from market_ingestor.bus.records import RecordBuilder, is_batched
from market_ingestor.config import BatchConfig
from market_ingestor.streams.sequence import InputSequence

log = logging.getLogger(__name__)

RUNNING_MARKER = ".running"
_PARTITION_CACHE_MAX = 100_000
# Records in the log past what an agent took, and none of them delivered for this long: Faust lost them on the way
# (streams/sequence.py) and the partition is sought back. A slow batch costs a re-fetch at worst.
INPUT_STALL_S = 5.0
# A fence with no new assignment this long after it (longer than a rebalance takes under exactly_once, ~10 s) was
# not another member taking our partitions: the worker asks the group for a new assignment (rejoin_if_stuck).
FENCE_REJOIN_S = 30.0
# Every assigned partition gets a fetch answer at least every ~1.5 s (Faust's poll of idle partitions). None for this
# long: the broker is away (or flow control paused the partition); the last known end of the log is stale, so the
# backlog is unknown (and the kline timer closes no window by the wall clock meanwhile).
LIVE_FETCH_S = 5.0
# After such a gap the backlog stays unknown this long from the first answer again: the log end the broker gives then
# lacks what ingest held during the outage (its publisher retries every 0.5-5 s, bus/kafka.py), and a window closed
# by the wall clock meanwhile is re-published as a correction for every batch of the held trades (a chaos run:
# revision 179 of the outage minute, 27 s away).
RESUMED_SETTLE_S = 10.0


@dataclass(frozen=True, slots=True)
class InputLimits:
    """How an agent batches its input: ``records`` per take from the stream, more takes while they come full
    (a backlog) up to ``max_bytes`` of record values, at most ``within_s`` waiting for a take to fill."""

    records: int = 32
    max_bytes: int = 8 * 1024 * 1024
    within_s: float = 0.05  # float-ok: seconds


class PartitionWriter:
    def __init__(self, app: faust.App, batch: BatchConfig | None = None, input_topic: str | None = None) -> None:
        self.app = app
        self.batch = batch or BatchConfig()
        self._records: dict[tuple[str, int, TP], RecordBuilder] = {}  # open output records
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}
        self._pending: list[Awaitable[Any]] = []
        self._touched: set[TP] = set()
        self._committed: dict[TP, int] = {}  # input offsets this writer committed (the next offset to read)
        self._unpersisted: dict[TP, tuple[Any, int]] = {}  # changelog partition -> (store, offset), exactly_once
        self._generation = -1
        # Partitions revoked since the assignment of generation ``_revoked_in``: the consumer reports its old
        # assignment until the next one, but they are no longer ours to process or commit.
        self._revoked: set[TP] = set()
        self._revoked_in = -1
        # Under exactly_once: the generation in which this worker found its producers fenced (another worker was
        # given its partitions, e.g. while it was paused past its session timeout), and who is told so.
        self._fenced_in = -2
        self._fenced_at = 0.0
        self._rejoin_asked_in = -2
        self._fence_listeners: list[Callable[[set[TP]], None]] = []
        self.sequence = InputSequence(app)
        # Per input partition: the last fetch answer seen by backlog(), and the first one after a gap in them.
        self._fetched: dict[TP, float] = {}  # float-ok: wall-clock seconds
        self._resumed: dict[TP, float] = {}  # float-ok: wall-clock seconds
        self.input_topic = input_topic
        if input_topic is not None:
            faust_internals.declare_transaction_source(app, input_topic)  # its own producer per partition
            app.timer(1.0, name=f"{input_topic}-input-watch")(self.resume_stalled_input)

    @property
    def closed(self) -> bool:
        """True at shutdown under ``exactly_once`` once the final commit has ended the transactions: input taken
        after that is not processed (it is not committed either, so it comes again after a restart)."""
        return self.app.in_transaction and faust_internals.transactions_ended(self.app)

    def on_fenced(self, listener: Callable[[set[TP]], None]) -> None:
        """Calls ``listener`` with the input partitions this worker lost when it finds its producers fenced: their
        states and local rows hold work of transactions the broker aborted."""
        self._fence_listeners.append(listener)

    @property
    def fenced(self) -> bool:
        """True from a fence until the next assignment: nothing is sent, saved or committed meanwhile."""
        return self._fenced_in == self.app.consumer_generation_id

    def _is_fence(self, exc: BaseException, sources: Iterable[TP] = ()) -> bool:
        """Whether ``exc`` means this worker's transactions were fenced: a ProducerFenced (maybe as the cause of
        Faust's ProducerSendError), or a failure while the producer of one of ``sources`` can no longer commit."""
        if not self.app.in_transaction:
            return False
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ProducerFenced):
                return True
            cause = cause.__cause__
        return any(faust_internals.transaction_fenced(self.app, tid) for tid in self._transactional_ids(sources))

    def _transactional_ids(self, sources: Iterable[TP]) -> set[str]:
        return {faust_internals.transactional_id(self.app, tp) for tp in sources}

    def _input_assignment(self) -> set[TP]:
        consumer: Any = self.app.consumer
        return {tp for tp in consumer.assignment() if tp.topic == self.input_topic}

    def _fence(self, exc: BaseException) -> None:
        """Another worker was given this worker's partitions (its producers fenced ours; the broker aborted our
        open transactions). Everything of the current assignment is forgotten until the next one (which Faust
        gives with new producers, ``bus/faust/internals.py``), the outputs under way are dropped, and the
        listeners drop the states and local rows of the lost input partitions."""
        lost = self._input_assignment()
        log.warning(
            "producer fenced: partitions %s were given to another worker; their work since the last commit is "
            "aborted, their local rows are rebuilt from the changelog when they come back",
            sorted(tp.partition for tp in lost),
            extra={"error": repr(exc)},
        )
        self._fenced_in = self.app.consumer_generation_id
        self._fenced_at = time.monotonic()
        consumer: Any = self.app.consumer
        self.forget(set(consumer.assignment()))
        self._records.clear()
        pending, self._pending = self._pending, []
        for future in pending:  # they fail as fenced; nobody waits for them
            future.add_done_callback(_consume_outcome)  # type: ignore[attr-defined]
        numbers = {tp.partition for tp in lost}
        for changelog in [changelog for changelog in self._unpersisted if changelog.partition in numbers]:
            del self._unpersisted[changelog]  # offsets of aborted changelog records: never stored
        for listener in self._fence_listeners:
            listener(lost)

    async def batches(self, stream: Any, limits: InputLimits) -> AsyncIterator[list[Any]]:
        """The agent's input in batches of events (records) it may process.

        Takes of ``limits.records`` records are held while more than a take's worth of records waits behind them
        in their partitions (a backlog: one batch then amortizes the per-batch costs, state rows and commits,
        over more trades), up to ``limits.max_bytes`` and ``limits.within_s``; once the agent has caught up, what
        it holds is processed at once.

        Faust skips events fetched before a rebalance (it seeks the partitions to their committed offsets), but a
        ``take_events`` buffer filled before the rebalance is still handed over afterwards; processing it would
        apply events ahead of the re-read ones, and the offset-idempotent state would then take the re-read ones
        for duplicates. Those are dropped, uncommitted (inputs are ``acks=False``): they come again in order. So
        is what was held across the rebalance, and everything once :attr:`closed`. Within a generation, events
        pass only in offset order without holes (:class:`~market_ingestor.streams.sequence.InputSequence`).
        """
        held: list[Any] = []
        held_bytes, held_since = 0, 0.0
        async for events in stream.take_events(limits.records, within=limits.within_s):
            generation = self.app.consumer_generation_id
            if generation != self._generation:  # the rebalance sought every partition to its committed offset
                self._generation = generation
                self._committed.clear()
                held, held_bytes = [], 0
            current = [event for event in events if event.message.generation_id == generation]
            if current:
                partitions = {event.message.tp for event in current}
                current = await self.sequence.in_order(current, {tp: self.next_offset(tp) for tp in partitions})
            if self.app.consumer_generation_id != generation:
                held, held_bytes = [], 0  # a rebalance came during the awaits: the next take starts the generation
                continue
            if self.closed:
                continue
            if current and not held:
                held_since = time.monotonic()
            held += current
            held_bytes += sum(len(event.value or b"") for event in current)
            if held and (
                held_bytes >= limits.max_bytes
                or time.monotonic() - held_since >= limits.within_s
                or not self._behind(held, limits.records)
            ):
                self.sequence.busy()
                yield held
                self.sequence.idle()
                held, held_bytes = [], 0

    async def resume_stalled_input(self) -> None:
        """Seeks back input partitions whose records stopped coming while the log holds more
        (:meth:`InputSequence.resume_stalled`); not while Faust rebalances or recovers (it seeks them itself).
        Asks for a new assignment when a fence has not brought one (:meth:`rejoin_if_stuck`)."""
        await self.rejoin_if_stuck()
        if self.closed or self.fenced or self.app.rebalancing or self.app.in_recovery or self.app.should_stop:
            return
        if not faust_internals.recovery_completed(self.app):
            return
        assigned = [tp for tp in self.owned() if tp.topic == self.input_topic]
        if assigned:
            committed = {tp: self.next_offset(tp) for tp in assigned}
            await self.sequence.resume_stalled(assigned, committed, INPUT_STALL_S)

    async def rejoin_if_stuck(self, now: float | None = None) -> bool:  # float-ok: monotonic seconds
        """A fence normally comes with a rebalance (another member was given our partitions), and the new
        assignment brings new producers. A producer that failed for another reason (its sender died while the
        broker was away, seen in the chaos run) is taken for a fence as well, and then no rebalance comes: the
        worker sat on partitions it no longer processed. After ``FENCE_REJOIN_S`` without a new assignment this
        worker asks the group for one (once per generation); returns whether it asked."""
        now = time.monotonic() if now is None else now
        generation = self.app.consumer_generation_id
        if not self.fenced or self._rejoin_asked_in == generation or self.app.rebalancing or self.app.should_stop:
            return False
        if now - self._fenced_at < FENCE_REJOIN_S:
            return False
        self._rejoin_asked_in = generation
        log.warning("no new assignment %.0f s after a fence: asking the group for one", now - self._fenced_at)
        await faust_internals.request_rejoin(self.app)
        return True

    def _behind(self, held: list[Any], records: int) -> bool:
        """Whether more than ``records`` records wait in the log behind the ``held`` events' partitions (False
        where the end of a partition is not known yet)."""
        consumer: Any = self.app.consumer
        last: dict[TP, int] = {}
        for event in held:
            last[event.message.tp] = event.message.offset
        waiting = 0
        for tp, offset in last.items():
            end = consumer.highwater(tp)
            if end is not None:
                waiting += max(end - offset - 1, 0)
        return waiting > records

    def current(self, events: Iterable[Any]) -> list[Any]:
        """The events an agent may process now: taken in the consumer's current generation, of partitions it owns
        (:meth:`owned`).

        A batch can reach an agent after the next assignment: :meth:`batches` awaits the broker (the committed
        offset of a partition it has no record of yet, a seek) and the agent waits for its lock, which the
        revocation holds. Processed then, before the new generation's table recovery and while Faust replaces the
        transactional producer of every assigned partition (``bus/faust/internals.py``), its outputs and rows
        could go into a transaction the new producer aborts while its input offsets commit in the next one: state
        and outputs behind the committed input, an exactly-once violation. Faust delivers those records again
        from the committed offsets once the new generation's recovery is done."""
        generation = self.app.consumer_generation_id
        owned = self.owned()
        return [event for event in events if event.message.generation_id == generation and event.message.tp in owned]

    def owned(self) -> set[TP]:
        """The partitions this worker may process and commit: assigned, and not revoked since. Between a revocation
        and the next assignment the consumer still reports the old assignment; work committed for a revoked
        partition there would race its new owner (under ``exactly_once`` its producer fences ours)."""
        consumer: Any = self.app.consumer
        if self._revoked and self.app.consumer_generation_id != self._revoked_in:
            self._revoked.clear()  # a new assignment: the consumer's answer is current again
        return set(consumer.assignment()) - self._revoked

    def transactional_id(self, source: TP) -> str | None:
        if not self.app.in_transaction:
            return None
        return faust_internals.transactional_id(self.app, source)

    async def send(self, topic: str, key: bytes, value: bytes, source: TP) -> None:
        """Sends one event derived from ``source``'s input. On a batched topic (``bus/records.py``) it joins the
        open record of its output partition and source; records go out when full and at :meth:`flush`."""
        await self.send_all(topic, ((key, value, source),))

    async def send_all(self, topic: str, events: Iterable[tuple[bytes, bytes, TP]]) -> None:
        """:meth:`send` for each ``(key, value, source)`` in turn: one call per batch of outputs, where the agents
        send thousands of events per second (in-progress klines) and a coroutine per event showed in profiles."""
        if not is_batched(topic):
            for key, value, source in events:
                await self._send(topic, key, value, None, source)
            return
        partition_of, records = self._partition_of, self._records
        for key, value, source in events:
            partition = partition_of.get((topic, key))
            if partition is None:
                partition = await self.partition_of(topic, key)
            slot = (topic, partition, source)
            record = records.get(slot)
            if record is None:
                record = records[slot] = RecordBuilder(self.batch.max_events, self.batch.max_bytes)
            elif not record.fits(value):
                await self._send_record(slot)
                record = records[slot] = RecordBuilder(self.batch.max_events, self.batch.max_bytes)
            record.add(key.decode(), value)

    async def _send_record(self, slot: tuple[str, int, TP]) -> None:
        # The agent and the timer share this writer: the other one may have sent this record meanwhile.
        record = self._records.pop(slot, None)
        if record is not None and record.key is not None:
            await self._send(slot[0], record.key.encode(), record.value(), slot[1], slot[2])

    async def _send(self, topic: str, key: bytes, value: bytes, partition: int | None, source: TP) -> None:
        if self.fenced:
            return
        try:
            future = await self.app.producer.send(
                topic, key, value, partition, None, None, transactional_id=self.transactional_id(source)
            )
        except Exception as exc:
            if not self._is_fence(exc, [source]):
                raise
            self._fence(exc)
            return
        self._pending.append(future)
        self._touched.add(source)

    async def partition_of(self, topic: str, key: bytes) -> int:
        """The partition of ``key`` on ``topic``: Kafka's murmur2, as every publisher of ours, over the partitions
        in the producer's metadata (waited for when ``topic`` is new to it)."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = await faust_internals.producer_partitions(self.app, topic)
        partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        if len(self._partition_of) >= _PARTITION_CACHE_MAX:
            self._partition_of.clear()
        self._partition_of[(topic, key)] = partition
        return partition

    async def save(self, table: Any, key: bytes, value: bytes, source: TP) -> None:
        """Writes a row to the local store and its changelog, in the partition of ``source``."""
        if self.fenced:
            return
        faust_internals.write_row(table, key, value, source)
        changelog = TP(table.changelog_topic.get_topic_name(), source.partition)
        try:
            future = await self.app.producer.send(
                changelog.topic,
                key,
                value,
                changelog.partition,
                None,
                None,
                transactional_id=self.transactional_id(source),
            )
        except Exception as exc:
            if not self._is_fence(exc, [source]):
                raise
            self._fence(exc)  # the listeners remove the row just written
            return
        future.add_done_callback(lambda done: self._persisted(table, changelog, done))  # type: ignore[attr-defined]
        self._pending.append(future)
        self._touched.add(source)

    def _persisted(self, table: Any, changelog: TP, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        offset = done.result().offset
        if self.app.in_transaction:
            # The offset a restart replays the changelog from is stored once the transaction commits. (Faust's
            # own persist_offset_on_commit keys it by changelog partition but flushes it by source partition, so
            # it never stores it.)
            stored = self._unpersisted.get(changelog)
            if stored is None or stored[1] < offset:
                self._unpersisted[changelog] = (faust_internals.table_store(table), offset)
        else:
            faust_internals.persist_offset(faust_internals.table_store(table), changelog, offset)

    async def flush(self) -> None:
        """Sends the open records, then waits until every output sent so far is acknowledged (or raises the
        first failure). Under ``exactly_once`` a fence is not a failure: :meth:`_fence` handles it."""
        for slot in list(self._records):
            await self._send_record(slot)
        pending, self._pending = self._pending, []
        if pending and not self.app.in_transaction:
            await asyncio.gather(*pending)
        elif pending:
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if not failures:
                return
            sources = self._input_assignment()
            fence = next((failure for failure in failures if self._is_fence(failure, sources)), None)
            if fence is None:
                raise failures[0]
            if not self.fenced:
                self._fence(fence)

    async def commit_input(self, offsets: dict[TP, int]) -> None:
        """Commits the input ``offsets`` (next offset to read per partition) of events fully processed.

        The agents' input topics are declared ``acks=False``: Faust acks events it skips without processing them
        (those fetched before a rebalance, e.g. when a restarted worker's killed predecessor leaves the group), and
        its commit would then cover them; a trade was lost that way. Committing here only what was processed keeps
        skipped events for the next read after Faust's seek.
        """
        owned = self.owned()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not offsets or self.closed:
            return
        if self.app.in_transaction:
            if not await self._commit_transaction(offsets):
                return
            self._persist(offsets)
        else:
            await self.flush()  # the rows recording these events as done are on their changelogs first
            await faust_internals.commit_offsets(self.app, offsets)
        self._committed.update(offsets)

    async def commit_idle(self) -> None:
        """Commits the transactions a timer wrote into, for partitions whose input is quiet.

        Faust commits a partition's transaction only when new input offsets are acknowledged; klines closed by the
        wall clock on a quiet partition would otherwise wait, invisible to ``read_committed`` readers, until the
        broker aborts the transaction at its timeout. The offsets sent again are the ones already committed.
        """
        touched, self._touched = self._touched, set()
        if not self.app.in_transaction or not touched or self.closed:
            return
        owned = self.owned()
        idle = {}
        for tp in touched:
            offset = self.next_offset(tp)
            if offset is not None and tp in owned:
                idle[tp] = offset
        if idle and await self._commit_transaction(idle):
            self._persist(idle)

    async def _commit_transaction(self, offsets: dict[TP, int]) -> bool:
        """Commits the transactions of ``offsets``' partitions; False when fenced (nothing may count as
        committed: Faust skips, with a warning, a partition whose fenced producer it dropped)."""
        if self.fenced:
            return False
        try:
            if any(faust_internals.transaction_fenced(self.app, tid) for tid in self._transactional_ids(offsets)):
                raise ProducerFenced()
            await faust_internals.commit_transaction(self.app, offsets)
        except Exception as exc:
            if not self._is_fence(exc, offsets):
                raise
            self._fence(exc)
            return False
        return True

    def next_offset(self, source: TP) -> int | None:
        """The next offset to read of ``source``: what this writer committed last in this generation, else what
        Faust found committed when the partition was assigned (until the generation's first take, the writer's own
        commits are of an earlier generation)."""
        committed = self._committed.get(source) if self._generation == self.app.consumer_generation_id else None
        if committed is None:
            committed = faust_internals.committed_offset(self.app, source)
        return committed if committed is not None and committed >= 0 else None  # -1: nothing committed

    def backlog(self, source: TP, now: float | None = None) -> int | None:  # float-ok: wall-clock seconds
        """Records of ``source`` in the topic and not yet processed (None while unknown, while no fetch has
        answered for ``LIVE_FETCH_S``, and for ``RESUMED_SETTLE_S`` after such a gap)."""
        consumer: Any = self.app.consumer
        done = self.sequence.expected(source)  # taken in order so far (commits lag behind, by checkpoint)
        if done is None:
            done = self.next_offset(source)
        if done is None or source not in consumer.assignment():
            return None
        end = consumer.highwater(source)
        if end is None:
            return None
        fetched = faust_internals.last_fetch_s(self.app, source)
        if fetched is None:
            return None
        last = self._fetched.get(source)
        self._fetched[source] = fetched
        if last is not None and fetched - last > LIVE_FETCH_S:
            self._resumed[source] = fetched  # the first answer after a gap (a broker away)
        now = time.time() if now is None else now
        if now - fetched > LIVE_FETCH_S:
            return None  # the end known is the last answer's: trades may wait behind it (a broker away, seen in chaos)
        resumed = self._resumed.get(source)
        if resumed is not None and now - resumed < RESUMED_SETTLE_S:
            return None  # back from a gap: what ingest held then may not be in the log yet
        return max(end - done, 0)

    def _persist(self, committed: dict[TP, int]) -> None:
        """Stores the changelog offsets of rows whose transactions just committed (a row's changelog partition
        is the number of its source partition)."""
        partitions = {tp.partition for tp in committed}
        for changelog, (store, offset) in list(self._unpersisted.items()):
            if changelog.partition in partitions:
                faust_internals.persist_offset(store, changelog, offset)
                del self._unpersisted[changelog]

    def forget(self, sources: Iterable[TP]) -> None:
        """``sources`` were revoked: their open records are dropped, and nothing more is committed for them until
        a new assignment gives them back."""
        sources = set(sources)
        if self.app.consumer_generation_id != self._revoked_in:
            self._revoked.clear()
        self._revoked.update(sources)
        self._revoked_in = self.app.consumer_generation_id
        for slot in [slot for slot in self._records if slot[2] in sources]:
            del self._records[slot]  # outputs of input that is no longer ours: the new owner derives them again
        self._touched.difference_update(sources)
        self.sequence.forget(sources)
        for tp in sources:
            self._committed.pop(tp, None)


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def next_offsets(events: Iterable[Any]) -> dict[TP, int]:
    """The offset after the last of ``events`` in each partition: what to commit once they are processed."""
    offsets: dict[TP, int] = {}
    for event in events:
        tp, offset = event.message.tp, event.message.offset + 1
        if offset > offsets.get(tp, -1):
            offsets[tp] = offset
    return offsets


def prepare_data_dir(data_dir: Path, exactly_once: bool) -> None:
    """Marks the data dir as in use; after an unclean stop under ``exactly_once`` its tables are removed first."""
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir / RUNNING_MARKER
    if marker.exists() and exactly_once:
        log.warning(
            "%s was not stopped cleanly: removing its local tables, which may hold writes of an aborted "
            "transaction; they are restored from the committed changelogs",
            data_dir,
        )
        for child in data_dir.iterdir():
            if child.name != RUNNING_MARKER:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    marker.touch()


def mark_clean_stop(data_dir: Path) -> None:
    (data_dir / RUNNING_MARKER).unlink(missing_ok=True)

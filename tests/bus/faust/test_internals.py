"""Every private name of faust-streaming and aiokafka that ``bus/faust/internals.py`` uses is still there and
still does what we rely on. Each test names the internal, so an upgrade that changes one fails by that name."""

from __future__ import annotations

import inspect
import uuid
from importlib import metadata
from typing import Any

import aiokafka
import faust
import faust.streams
import faust.tables.recovery
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.producer.producer import AIOKafkaProducer
from faust.stores.rocksdb import Store as RocksStore
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from market_ingestor.bus.faust import internals as faust_internals


def source_of(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def test_the_tested_faust_version_is_installed() -> None:
    assert metadata.version("faust-streaming") == faust_internals.TESTED_FAUST, (
        "faust-streaming was upgraded: re-read every internal in bus/faust/internals.py, then update "
        "TESTED_FAUST and the pin"
    )
    assert aiokafka.__version__.startswith("0.14."), f"aiokafka {aiokafka.__version__}: re-check the internals"


def test_AIOKafkaConsumerThread__create_worker_consumer_reads_in_transaction_for_the_isolation_level() -> None:
    method = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
    source = source_of(method)
    assert "in_transaction" in source and "read_committed" in source, "_create_worker_consumer changed"
    assert list(inspect.signature(method).parameters) == ["self", "transport"]


async def test_AIOKafkaConsumer__fetch_max_wait_ms_is_read_when_the_consumer_starts() -> None:
    consumer = aiokafka.AIOKafkaConsumer(fetch_max_wait_ms=123)  # not started: no connection
    assert consumer._fetch_max_wait_ms == 123, "AIOKafkaConsumer._fetch_max_wait_ms was renamed"
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source_of(aiokafka.AIOKafkaConsumer.start), (
        "AIOKafkaConsumer.start no longer passes _fetch_max_wait_ms to its fetcher"
    )


def test_Consumer__new_consumer_thread_is_the_hook_for_the_thread_class() -> None:
    assert "AIOKafkaConsumerThread(" in source_of(faust_aiokafka.Consumer._new_consumer_thread)
    assert "def _new_consumer_thread" not in source_of(faust_internals._Consumer).replace(
        "def _new_consumer_thread", "", 1
    )


def test_Consumer_commit_and_end_transactions_and_commit_exist_with_our_signatures() -> None:
    assert inspect.iscoroutinefunction(faust_aiokafka.Consumer.commit_and_end_transactions)
    params = list(inspect.signature(faust_consumer.Consumer.commit).parameters)
    assert params == ["self", "topics", "start_new_transaction"], f"Consumer.commit changed: {params}"


def test_AIOKafkaConsumerThread__highwaters_is_what_table_recovery_measures_the_changelogs_with() -> None:
    method = faust_aiokafka.AIOKafkaConsumerThread._highwaters
    assert inspect.iscoroutinefunction(method), "AIOKafkaConsumerThread._highwaters is gone or no longer async"
    assert list(inspect.signature(method).parameters) == ["self", "partitions"]
    assert "self._highwaters" in source_of(faust_aiokafka.AIOKafkaConsumerThread.highwaters)
    assert "consumer.highwaters(" in source_of(faust.tables.recovery.Recovery._build_highwaters)
    # Why ours is needed: under exactly_once Faust reads the last stable offset of the last fetch.
    assert "last_stable_offset" in source_of(method), "Faust's _highwaters changed: is our override still needed?"


def test_PartitionRecords__unpack_records_passes_over_control_and_aborted_batches_moving_next_fetch_offset() -> None:
    original = faust_internals._unpack_records  # the class may hold ours already (a worker started in this process)
    assert inspect.isgeneratorfunction(original), "PartitionRecords._unpack_records is no longer a generator"
    source = source_of(original)
    assert "is_control_batch" in source and "self.next_fetch_offset = next_batch.next_offset" in source, (
        "PartitionRecords._unpack_records changed how it passes over batches"
    )
    assert "self._unpack_records()" in source_of(PartitionRecords.__init__), "PartitionRecords no longer uses it"
    assert "self._tp = tp" in source_of(PartitionRecords.__init__), "PartitionRecords._tp was renamed"


@pytest.mark.kafka
async def test_the_offsets_a_read_committed_consumer_passes_over_are_noted(dev_stack: Any) -> None:
    """On the real broker: a commit marker, an aborted batch with its marker, and the marker ending the log."""
    if not dev_stack.supports_transactions:
        pytest.skip(f"{dev_stack.kafka_kind} has no Kafka transactions")
    topic = f"internals-skips-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=dev_stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=dev_stack.kafka_bootstrap, transactional_id=f"{topic}-tx")
    await producer.start()
    try:
        for value, commit in ((b"a", True), (b"x", False), (b"b", True)):  # offsets: a 0, 1, x 2, 3, b 4, 5
            await producer.begin_transaction()
            await producer.send_and_wait(topic, value)
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()
    faust_internals.note_skipped_offsets()
    consumer = aiokafka.AIOKafkaConsumer(
        topic, bootstrap_servers=dev_stack.kafka_bootstrap, isolation_level="read_committed",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    tp = aiokafka.TopicPartition(topic, 0)
    try:
        seen: list[tuple[int, bytes]] = []
        while len(seen) < 2 or await consumer.position(tp) < 6:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen += [(record.offset, record.value) for record in records]
    finally:
        await consumer.stop()
    assert seen == [(0, b"a"), (4, b"b")]
    faust_tp = faust.types.TP(topic, 0)
    assert faust_internals.skipped(faust_tp, 1, 4) and faust_internals.skipped(faust_tp, 5, 6)
    assert not faust_internals.skipped(faust_tp, 0, 1) and not faust_internals.skipped(faust_tp, 1, 5)


def test_Consumer_wait_empty_ends_the_transactions_at_every_revocation_too() -> None:
    """Our "final commit" flag is set only for a stopping consumer, because ``wait_empty`` (called by the
    revocation when ``stream_wait_empty`` is on) ends the transactions too."""
    assert "self.commit_and_end_transactions)()" in source_of(faust_consumer.Consumer.wait_empty)
    assert "wait_empty()" in source_of(faust.App._consumer_wait_empty)
    assert "should_stop" in source_of(faust_internals._Consumer.commit_and_end_transactions)


def test_Consumer__commit_takes_offsets_and_returns_whether_it_committed() -> None:
    method = faust_consumer.Consumer._commit
    assert inspect.iscoroutinefunction(method), "Consumer._commit is gone or no longer async"
    assert list(inspect.signature(method).parameters)[:2] == ["self", "offsets"]


def test_Consumer__committed_offset_is_the_map_filled_at_assignment() -> None:
    source = source_of(faust_consumer.Consumer)
    assert "self._committed_offset" in source, "Consumer._committed_offset was renamed"
    assert (
        "_committed_offset[tp]" in source
        or "_committed_offset.update" in source
        or ("self._committed_offset[" in source)
    )


def test_Producer_commit_transactions_is_what_TransactionManager_commit_calls_and_crashes_on_a_fence() -> None:
    """``commit_transaction`` calls the producer's ``commit_transactions`` itself: Faust's ``TransactionManager.commit``
    (which groups the offsets by transactional id as we do, with ``app.conf.id`` for the group) crashes the app
    on ProducerFenced, which ``PartitionWriter`` handles."""
    params = list(inspect.signature(faust_aiokafka.Producer.commit_transactions).parameters)
    assert params == ["self", "tid_to_offset_map", "group_id", "start_new_transaction"], params
    source = source_of(faust_consumer.TransactionManager.commit)
    assert "producer.commit_transactions(" in source and "group_id = self.app.conf.id" in source
    assert 'transactional_id = f"{group_id}-{group}-{tp.partition}"' in source, "the transactional ids changed"
    assert "self.app.crash(pf)" in source, "TransactionManager.commit no longer crashes on a fence"
    assert "send_offsets_to_transaction(" in source_of(faust_aiokafka.Producer.commit_transactions)


def test_TransactionManager__tps_to_transactional_ids_is_how_faust_names_the_producers_it_starts_and_stops() -> None:
    manager = faust_consumer.TransactionManager
    assert list(inspect.signature(manager._tps_to_transactional_ids).parameters) == ["self", "tps"]
    source = source_of(manager.on_rebalance)
    assert "self._tps_to_transactional_ids(revoked)" in source and "self._tps_to_transactional_ids(assigned)" in source
    assert "assignor.is_standby(tp)" in source_of(manager._tps_to_active_tpgs)


def test_each_partition_of_each_input_topic_has_a_producer_of_its_own() -> None:
    """Faust's ids are per (topic group, partition), and its assignor groups topics by partition count: the kline
    agent's and the indicator agent's inputs shared a transaction per partition number."""
    from types import SimpleNamespace

    from faust.types import TP

    app = SimpleNamespace(
        conf=SimpleNamespace(id="w1"),
        assignor=SimpleNamespace(is_standby=lambda tp: tp.topic.endswith("-changelog")),
    )
    faust_internals.declare_transaction_source(app, "p.market.trades")  # type: ignore[arg-type]
    faust_internals.declare_transaction_source(app, "p.market.klines")  # type: ignore[arg-type]
    trades, klines = TP("p.market.trades", 7), TP("p.market.klines", 7)
    assert faust_internals.transactional_id(app, trades) != faust_internals.transactional_id(app, klines)  # type: ignore[arg-type]
    assigned = {trades, klines, TP("p.market.trades", 2), TP("w1-kline-state-changelog", 7)}
    manager = SimpleNamespace(app=app)
    ids = faust_internals._TransactionManager._tps_to_transactional_ids(manager, assigned)  # type: ignore[arg-type]
    assert ids == {"w1-p.market.trades-7", "w1-p.market.klines-7", "w1-p.market.trades-2"}  # no changelog's


def test_Consumer_seek_wait_and_earliest_offsets_exist() -> None:
    assert inspect.iscoroutinefunction(faust_consumer.Consumer.seek_wait), "Consumer.seek_wait is gone"
    assert inspect.iscoroutinefunction(faust_aiokafka.Consumer.earliest_offsets), "earliest_offsets is gone"


def test_Consumer__thread_call_thread_and__ensure_consumer_reach_aiokafkas_committed() -> None:
    assert "self._thread" in source_of(faust_consumer.ThreadDelegateConsumer), "Consumer._thread is gone"
    assert inspect.iscoroutinefunction(faust_aiokafka.AIOKafkaConsumerThread.call_thread), "call_thread changed"
    assert "def _ensure_consumer" in source_of(faust_aiokafka.AIOKafkaConsumerThread), "_ensure_consumer is gone"
    params = list(inspect.signature(aiokafka.AIOKafkaConsumer.committed).parameters)
    assert params == ["self", "partition"], f"AIOKafkaConsumer.committed changed: {params}"


def test_AIOKafkaConsumer__coordinator_request_rejoin_makes_the_next_poll_rejoin() -> None:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert "self._coordinator = GroupCoordinator(" in source_of(aiokafka.AIOKafkaConsumer.start), (
        "AIOKafkaConsumer._coordinator changed"
    )
    assert "_rejoin_needed_fut.set_result" in source_of(GroupCoordinator.request_rejoin), "request_rejoin changed"
    assert "_rejoin_needed_fut.done()" in source_of(GroupCoordinator.need_rejoin), "need_rejoin changed"


def test_faust_streams__current_event_is_what_the_rocksdb_store_reads_for_the_partition() -> None:
    assert isinstance(faust.streams._current_event, type(faust_internals._current_event))
    store_source = source_of(RocksStore)
    assert "current_event()" in store_source and "event.message.partition" in store_source, (
        "the RocksDB store no longer takes a write's partition from the current event"
    )


def test_Store_set_persisted_offset_exists() -> None:
    params = list(inspect.signature(RocksStore.set_persisted_offset).parameters)
    assert params == ["self", "tp", "offset"], f"Store.set_persisted_offset changed: {params}"


def test_Table_data_is_the_store() -> None:
    from faust.tables.base import Collection

    assert isinstance(inspect.getattr_static(Collection, "data"), property), "Collection.data is gone"


def test_AIOKafkaConsumer_last_poll_timestamp_is_the_wall_clock_ms_of_the_last_fetch_answer() -> None:
    """What ``last_fetch_s`` reads: the partition state's ``timestamp``, set with the high watermark by every fetch
    response, in wall-clock milliseconds."""
    import aiokafka.consumer.fetcher as fetcher

    source = inspect.getsource(aiokafka.AIOKafkaConsumer.last_poll_timestamp)
    assert "state_value(partition).timestamp" in source
    fetch = inspect.getsource(fetcher)
    assert "tp_state.timestamp = now_ms" in fetch and "now_ms = int(1000 * time.time())" in fetch


def test_TableManager_recovery_completed_exists() -> None:
    from faust.tables.recovery import Recovery

    assert "self.completed = Event()" in source_of(Recovery.__init__), "Recovery.completed changed"


def test_Producer__ensure_producer_returns_the_aiokafka_producer_with_partitions_for() -> None:
    assert "return self._producer" in source_of(faust_aiokafka.Producer._ensure_producer)
    assert inspect.iscoroutinefunction(AIOKafkaProducer.partitions_for), "AIOKafkaProducer.partitions_for changed"


async def test_AIOKafkaProducer__message_accumulator__batch_ttl_is_each_new_batchs_ttl() -> None:
    from aiokafka.producer.message_accumulator import MessageAccumulator

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started: no broker needed
    faust_internals.never_expire_batches(producer)
    assert producer._message_accumulator._batch_ttl == float("inf"), "AIOKafkaProducer._message_accumulator changed"
    assert "MessageBatch(tp, builder, self._batch_ttl" in source_of(MessageAccumulator), (
        "MessageAccumulator._batch_ttl is no longer the ttl of each new batch"
    )


async def test_AIOKafkaProducer__sender_close_and_accumulator_fail_all_stop_without_the_broker() -> None:
    from aiokafka.producer.message_accumulator import MessageAccumulator
    from aiokafka.producer.sender import Sender

    assert "self._sender = Sender(" in source_of(AIOKafkaProducer.__init__), "AIOKafkaProducer._sender changed"
    assert inspect.iscoroutinefunction(Sender.close), "aiokafka Sender.close changed"
    assert list(inspect.signature(MessageAccumulator.fail_all).parameters) == ["self", "exception"], (
        "MessageAccumulator.fail_all changed"
    )


@pytest.mark.parametrize(
    "name",
    ["commit_offsets", "commit_transaction", "seek_back", "log_start_offsets", "committed_at_broker", "request_rejoin"],
)
def test_our_wrappers_are_coroutines(name: str) -> None:
    assert inspect.iscoroutinefunction(getattr(faust_internals, name))


def test_no_other_module_touches_a_private_faust_or_aiokafka_name() -> None:
    import pathlib
    import re

    boundary = pathlib.Path(faust_internals.__file__)
    root = boundary.parents[2]  # the market_ingestor package
    pattern = re.compile(
        r"consumer\._commit\b|_committed_offset|_current_event|_ensure_producer|_fetch_max_wait_ms|"
        r"_create_worker_consumer|_new_consumer_thread|set_persisted_offset|\.seek_wait\(|\.earliest_offsets\(|"
        r"\._thread\b|_ensure_consumer|recovery\.completed|transactions\.commit\(|table\.data\b|_message_accumulator|"
        r"_batch_ttl|producer\._sender\b"
    )
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in root.rglob("*.py")
        if path != boundary
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith(("#", '"', "'", "-", "(``", "``"))
    ]
    assert offenders == [], f"private Faust/aiokafka names outside bus/faust/internals.py: {offenders}"


def test_App__on_agent_error_is_what_App_agent_gives_every_agent_as_on_error() -> None:
    assert inspect.iscoroutinefunction(faust.App._on_agent_error), "App._on_agent_error was renamed or changed"
    assert list(inspect.signature(faust.App._on_agent_error).parameters) == ["self", "agent", "exc"]
    assert "on_error=self._on_agent_error" in source_of(faust.App.agent), "App.agent no longer passes it"
    assert "self._on_error(self, exc)" in source_of(faust.agents.Agent._execute_actor), (
        "Agent._execute_actor no longer calls on_error when the agent raises"
    )


# --- fences ------------------------------------------------------------------------------------------------------


def test_Producer__transaction_producers_holds_one_producer_per_transactional_id() -> None:
    send = source_of(faust_aiokafka.Producer.send)
    assert "self._transaction_producers.get(transactional_id)" in send, "Producer._transaction_producers changed"
    # Faust drops a producer that its begin/commit/abort found fenced: a missing one counts as fenced.
    assert "self._transaction_producers.pop(transactional_id)" in source_of(faust_aiokafka.Producer.begin_transaction)
    assert "_transaction_producers.pop(transactional_id, None)" in source_of(faust_aiokafka.Producer.stop_transaction)
    assert inspect.iscoroutinefunction(faust_aiokafka.Producer.stop_transaction)


def test_AIOKafkaProducer__txn_manager_state_tells_a_fenced_producer() -> None:
    from aiokafka.producer.transaction_manager import TransactionManager as AioTransactionManager
    from aiokafka.producer.transaction_manager import TransactionState

    assert {"FATAL_ERROR", "ABORTABLE_ERROR"} <= set(TransactionState.__members__), "TransactionState changed"
    assert "self._txn_manager" in source_of(AIOKafkaProducer.__init__), "AIOKafkaProducer._txn_manager renamed"
    assert "TransactionState.FATAL_ERROR" in source_of(AioTransactionManager.fatal_error)
    assert "self.state" in source_of(AioTransactionManager.is_in_transaction)


def test_TransactionManager_on_rebalance_keeps_the_producers_of_kept_partitions() -> None:
    """Why ours stops the fenced ones first: Faust stops only revoked partitions' producers and begins (reusing
    the existing producer) for every assigned one."""
    method = faust_consumer.TransactionManager.on_rebalance
    assert list(inspect.signature(method).parameters) == ["self", "assigned", "revoked", "newly_assigned"]
    source = source_of(method)
    assert "self._tps_to_transactional_ids(revoked)" in source and "_start_transactions" in source
    assert "self._transaction_producers.get(transactional_id)" in source_of(faust_aiokafka.Producer.begin_transaction)
    assert "self.TransactionManager(" in source_of(faust_aiokafka.Transport.create_transaction_manager)
    assert faust_internals.Transport.TransactionManager is faust_internals._TransactionManager


def test_rocksdb_Store_partition_internals_that_discard_partition_uses() -> None:
    assert RocksStore.offset_key == b"__faust\0offset__", "Store.offset_key changed"
    assert list(inspect.signature(RocksStore._visible_keys).parameters) == ["self", "db"]
    assert list(inspect.signature(RocksStore._db_for_partition).parameters) == ["self", "partition"]
    assert "self._key_index[key] = partition" in source_of(RocksStore._set), "Store._key_index changed"
    assert "self.offset_key" in source_of(RocksStore.persisted_offset)


def test_Recovery_revoke_forgets_the_offsets_recovery_resumes_from() -> None:
    """A discarded partition must be recovered from the start of its changelog: ``revoke`` drops the offset an
    active or standby recovery would resume from, and ``_add`` falls back to the store's (now absent) offset."""
    source = source_of(faust.tables.recovery.Recovery.revoke)
    assert "self.active_offsets.pop(tp, None)" in source and "self.standby_offsets.pop(tp, None)" in source
    assert "table.persisted_offset(tp)" in source_of(faust.tables.recovery.Recovery._add)


# --- table recovery ----------------------------------------------------------------------------------------------


def test_Recovery_on_recovery_completed_calls_the_callbacks_before_it_checks_the_generation() -> None:
    """Why ours checks first: a recovery that ends after the next assignment ran the tables' callbacks for the new
    assignment before its recovery (the check came after them), and the kline agent kept the rows it took up."""
    from faust.tables.manager import TableManager as FaustTableManager

    method = faust.tables.recovery.Recovery.on_recovery_completed
    assert list(inspect.signature(method).parameters) == ["self", "generation_id"]
    source = source_of(method)
    assert "table.on_recovery_completed(" in source and "self.app.consumer_generation_id != generation_id" in source
    assert source.index("table.on_recovery_completed(") < source.index("consumer_generation_id != generation_id")
    recovery = inspect.getattr_static(FaustTableManager, "recovery")
    assert isinstance(recovery, property) and "self._recovery = Recovery(" in source_of(recovery.fget)
    assert "self.conf.TableManager(" in inspect.getsource(faust.app.base), "the TableManager setting is not used"


async def test_our_Recovery_runs_the_table_callbacks_for_the_current_generation_only() -> None:
    from faust.exceptions import ConsumerNotStarted

    from market_ingestor.bus.faust.app import StreamApp
    from market_ingestor.config import KafkaConfig

    app = StreamApp.on_kafka("internals-recovery", KafkaConfig(bootstrap="127.0.0.1:1"), store="memory://")
    called: list[int] = []

    async def on_recovered() -> None:
        called.append(faust_internals.recovered_generation(app))

    app.Table("rows", default=None).on_recover(on_recovered)
    assert isinstance(app.tables, faust_internals.TableManager)
    app.consumer_generation_id = 5
    await app.tables.recovery.on_recovery_completed(4)  # generation 4's recovery ended after 5 was assigned
    assert called == [] and faust_internals.recovered_generation(app) == -1
    with pytest.raises(ConsumerNotStarted):  # after the callbacks Faust resumes the consumer: not started here
        await app.tables.recovery.on_recovery_completed(5)
    assert called == [5]
    assert not faust_internals.inputs_sought(app)  # the seek to the committed offsets never came


def test_Recovery_completed_is_set_at_the_first_recovery_and_never_cleared() -> None:
    """Why ``inputs_sought`` records a generation of its own: Faust's ``completed`` says nothing of later ones."""
    source = inspect.getsource(faust.tables.recovery)
    assert "self.completed.set()" in source and "completed.clear()" not in source


def test_ConsumerRebalanceListener_numbers_each_assignment_with_the_coordinators_generation() -> None:
    """Ours replaces it (``Consumer.RebalanceListener``): a rejoin of a stable group gives the same generation."""
    assert "consumer.RebalanceListener(self)" in source_of(faust_aiokafka.AIOKafkaConsumerThread.__post_init__)
    source = source_of(faust_aiokafka.ConsumerRebalanceListener.on_partitions_assigned)
    assert "_ensure_consumer()._coordinator.generation" in source, "the listener no longer reads the generation"
    assert "app.consumer_generation_id = generation" in source, "the listener no longer sets the app's number"
    params = list(inspect.signature(faust_consumer.ConsumerThread.on_partitions_assigned).parameters)
    assert params == ["self", "assigned", "generation_id"], f"ConsumerThread.on_partitions_assigned changed: {params}"
    assert faust_internals._Consumer.RebalanceListener is faust_internals._RebalanceListener

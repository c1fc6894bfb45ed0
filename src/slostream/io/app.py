"""The worker: a Faust app (``create_app``) over the batch ingest (``ingest``), with its timers,
tasks and web views. Faust keeps group membership, co-partitioned assignment of the state table's
changelog, recovery, and every other topic's normal path; measurements bypass its per-message path
(``consumer``)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time

from slostream.config import Settings
from slostream.io import end_offsets, fetcher_close, undecodable
from slostream.io.consumer import SloApp
from slostream.io.control import ControlService
from slostream.io.fencing import GroupLease
from slostream.io.ingest import FINAL_CHECKPOINT_TIMEOUT_S, PROGRESS_OWED_CHECK_S, IngestService, source_record
from slostream.io.metrics import PipelineMetrics
from slostream.io.outage import BrokerWatch
from slostream.io.producer import OutputProducer
from slostream.io.security import faust_broker_credentials, kafka_client_options
from slostream.io.sinks import AlertSinks
from slostream.io.web import register_views
from slostream.pipeline.types import EVALUATION_INTERVAL_S

log = logging.getLogger("slostream")

LOOP_PROBE_S = 0.1  # slostream_event_loop_lag_seconds
SESSION_TIMEOUT_S = 10.0
LEASE_CHECK_S = 0.1  # a worker back from a pause fences itself this soon, even with nothing to send


def create_app(settings: Settings) -> SloApp:
    app = SloApp(
        settings.app_id,
        broker=settings.broker,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_credentials=faust_broker_credentials(settings),
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        datadir=settings.data_dir or tempfile.mkdtemp(prefix="slostream-"),
        producer_linger_ms=1,
        broker_commit_every=10_000,
        broker_max_poll_records=5_000,
        consumer_max_fetch_size=16 << 20,
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0,
        # Tansu holds every join for the full rebalance timeout.
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        stream_wait_empty=False,
        table_standby_replicas=0,
    )
    metrics = PipelineMetrics()
    outputs = OutputProducer(settings.broker_hosts, lone_forwards=bool(settings.changelog_fence),
                             client_options=kafka_client_options(settings), max_output_bytes=settings.max_output_bytes,
                             lease=GroupLease(SESSION_TIMEOUT_S))
    app.add_dependency(outputs)
    ingest = IngestService(app, settings, metrics, outputs)
    undecodable.install(ingest.skipped_batch, (ingest.topic, ingest.repartition_topic), source_record,
                        settings.max_batch_bytes)
    end_offsets.install()
    fetcher_close.install()
    metrics.attach(ingest)
    app.ingest = ingest
    app.topics.add(ingest.measurements)
    app.topics.add(ingest.repartition)
    if settings.alertmanager_url or settings.webhook_urls:
        ingest.sinks = AlertSinks(settings, ingest.firing_alerts, metrics.observe_sink_delivery)
        app.add_dependency(ingest.sinks)

    control = ControlService(ingest, settings)
    metrics.attach_control(control)

    @app.task
    async def judge_control_commands() -> None:
        await control.judge()

    @app.task
    async def apply_control_commands() -> None:
        await control.apply_audited()

    broker_watch = BrokerWatch(settings.broker_hosts)

    @app.task
    async def watch_broker() -> None:
        await broker_watch.run()

    @app.task
    async def check_lease() -> None:
        while True:
            ingest.writing()
            await asyncio.sleep(LEASE_CHECK_S)

    @app.task
    async def probe_event_loop() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_S)
            metrics.observe_loop_lag(time.perf_counter() - started - LOOP_PROBE_S)

    @app.timer(settings.tick_interval_s)
    async def advance_idle_partitions() -> None:
        await ingest.tick()

    if settings.partitions > 1:
        @app.timer(PROGRESS_OWED_CHECK_S)
        async def report_owed_progress() -> None:
            await ingest.report_owed_progress()

    if settings.slos:
        @app.timer(EVALUATION_INTERVAL_S)
        async def evaluate_held_back_slos() -> None:
            await ingest.evaluate_pending()

    @app.timer(settings.checkpoint_interval_s)
    async def checkpoint_state() -> None:
        if ingest.pacer.due(time.monotonic()):
            await ingest.checkpoint()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        await ingest.on_revoked(revoked)

    @app.on_before_shutdown.connect
    async def final_checkpoint(sender, **kwargs) -> None:
        if broker_watch.down_since is not None:
            log.warning("stopping with the broker unreachable since %s: the final checkpoint waits at most %.0f s, "
                        "then the worker exits without leaving its group; the next owner replays from the last "
                        "commit", time.strftime("%H:%M:%S", time.localtime(broker_watch.down_since)),
                        FINAL_CHECKPOINT_TIMEOUT_S)
        # Faust sends no revoke signal on a clean stop; without this a restart would
        # replay up to two report windows and re-judge them (same ids, but a repeat all the same).
        await ingest.final_checkpoint()
        await ingest.stop_reader()

    register_views(app, ingest, metrics, settings)
    return app

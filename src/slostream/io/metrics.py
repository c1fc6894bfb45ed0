"""Prometheus exposition: a custom collector that snapshots live state at scrape time."""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slostream.core.measurement import Reason

if TYPE_CHECKING:
    from slostream.io.control import ControlService
    from slostream.io.ingest import IngestService

SLI_GAUGES = (
    ("count", "slostream_sli_window_measurements", "Measurements in the last closed report window."),
    ("error_ratio", "slostream_sli_window_error_ratio", "Error ratio of the last closed report window."),
    ("throughput_per_s", "slostream_sli_window_throughput_per_second",
     "Measurements per second in the last closed report window."),
    ("mean", "slostream_sli_window_value_mean", "Mean value in the last closed report window."),
    ("min", "slostream_sli_window_value_min", "Smallest value in the last closed report window."),
    ("max", "slostream_sli_window_value_max", "Largest value in the last closed report window."),
)
# Of the last closed report window with outcomes (a model's predicted probabilities).
CALIBRATION_GAUGES = (
    ("ece", "slostream_sli_window_ece", "Expected calibration error of the last closed report window."),
    ("ece_bound", "slostream_sli_window_ece_bound",
     "max(0.015, c * sqrt(bins / n)) of the last closed report window: the SLO's threshold on ece."),
    ("ece_chance", "slostream_sli_window_ece_chance",
     "ECE a perfectly calibrated model is expected to show at the last closed report window's bin counts."),
    ("miscalibration_p", "slostream_sli_window_miscalibration_p_value",
     "p-value of the hypothesis that the last closed report window's predictions are calibrated."),
    ("brier", "slostream_sli_window_brier", "Brier score (mean squared error) of the last closed report window."),
)


# As client_python writes them (str of the float): quantile="0.5", not "0.50".
QUANTILE_LABELS = {"p50": "0.5", "p90": "0.9", "p95": "0.95", "p99": "0.99"}


class PipelineMetrics:
    """One registry per worker (and per test), never the global default."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_seconds = Histogram(
            "slostream_ingest_batch_processing_seconds",
            "Wall time to decode, window and emit one fetched batch of measurement records.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.loop_lag_seconds = Histogram(
            "slostream_event_loop_lag_seconds",
            "How late the worker's event loop ran a probe due every 0.1 s: the longest time timers "
            "(checkpoints, ticks) and the web endpoints waited behind processing.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.sink_delivery_seconds = Histogram(
            "slostream_sink_delivery_seconds",
            "Wall time from an alert's queueing for a sink to the sink accepting it (retries included).",
            ["sink"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )

    def observe_sink_delivery(self, sink: str, seconds: float) -> None:
        self.sink_delivery_seconds.labels(sink).observe(seconds)

    def attach(self, ingest: IngestService) -> None:
        self.registry.register(_StateCollector(ingest))

    def attach_control(self, control: ControlService) -> None:
        self.registry.register(_ControlCollector(control))

    def observe_batch(self, seconds: float) -> None:
        self.batch_seconds.observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(max(seconds, 0.0))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ControlCollector(Collector):
    def __init__(self, control: ControlService):
        self.control = control

    def collect(self):
        yield GaugeMetricFamily("slostream_control_auth_enabled",
                                "1 when control commands must be signed (control_keys is set), 0 when any is taken.",
                                value=int(self.control.auth.enabled))
        judged = CounterMetricFamily("slostream_control_commands",
                                     "Control commands this worker judged (while it owned partition 0) and audited, "
                                     "by outcome and reason.", labels=["outcome", "reason"])
        for (outcome, reason), count in sorted(self.control.judged.items()):
            judged.add_metric([outcome, reason], count)
        yield judged


class _StateCollector(Collector):
    def __init__(self, ingest: IngestService):
        self.ingest = ingest

    def collect(self):
        ingest = self.ingest
        yield _counter("slostream_ingest_records", "Kafka records consumed from the measurement topic.",
                       ingest.records_consumed)
        yield _counter("slostream_ingest_measurements_accepted", "Measurements accepted into SLI windows.",
                       ingest.accepted)
        yield _counter("slostream_ingest_measurements_replayed",
                       "Measurements skipped after a restart because the state already held them.",
                       ingest.skipped_replay)
        rejected = CounterMetricFamily(
            "slostream_ingest_measurements_rejected",
            "Measurements (or whole records) sent to the dead-letter topic, by reason.",
            labels=["reason"],
        )
        for reason in Reason:
            rejected.add_metric([reason.value], ingest.rejected.get(reason.value, 0))
        yield rejected
        yield _counter("slostream_ingest_measurements_forwarded",
                       "Measurements read here and forwarded to the partition that owns their service.",
                       ingest.forwarded)
        yield _counter("slostream_ingest_forward_duplicates",
                       "Forwarded measurements dropped because this owner already held them (a source replayed).",
                       ingest.forward_duplicates)
        yield _counter("slostream_ingest_undecodable_batches",
                       "Fetched record batches that could not be decoded (corrupt, or an unknown codec) and "
                       "were skipped.", ingest.undecodable_batches)
        yield _counter("slostream_state_records_unreadable",
                       "State changelog records a restore could not read (bytes that do not parse, an unknown "
                       "version, values out of range); what each held started afresh.", ingest.unreadable_state)
        yield _counter("slostream_sli_events", "SLI window events emitted.", ingest.sli_emitted)
        yield _counter("slostream_series_evicted", "Series dropped after series_ttl_s of quiet (state deleted).",
                       ingest.series_evicted)
        yield _counter("slostream_series_dropped_label_keys",
                       "Restored series kept under other label_keys than configured, dropped (state deleted).",
                       ingest.series_dropped_label_keys)
        snapshots = ingest.snapshots(reports=True)
        held = GaugeMetricFamily("slostream_series", "Series held, by partition.", labels=["partition"])
        for snap in snapshots:
            held.add_metric([str(snap.partition)], snap.series)
        yield held
        yield _counter("slostream_checkpoints", "State checkpoints completed.", ingest.checkpoints)
        yield _counter("slostream_fenced", "Times this worker's group lease ran out and it fenced itself.",
                       ingest.fences)
        lag = GaugeMetricFamily("slostream_consumer_lag_records",
                                "Records between the processed position and the partition end.",
                                labels=["partition"])
        for partition, value in sorted(ingest.lag(snapshots).items()):
            lag.add_metric([str(partition)], value)
        yield lag
        aligned = GaugeMetricFamily("slostream_aligned_until_timestamp_seconds",
                                    "Wall time (Unix seconds) before which every partition has reported reading "
                                    "everything; series of this owner close only data read before it. Far behind "
                                    "now: a partition is not being read.", labels=["partition"])
        # Finite only: one partition needs no alignment, and before every partition has reported
        # there is none.
        for snap in snapshots:
            if math.isfinite(snap.aligned_until):
                aligned.add_metric([str(snap.partition)], snap.aligned_until)
        yield aligned
        watermark = GaugeMetricFamily("slostream_watermark_seconds",
                                      "Newest event time in the partition minus the grace period (Unix "
                                      "seconds); each series has its own watermark.",
                                      labels=["partition"])
        label_keys = list(ingest.settings.label_keys)
        series_labels = ["service", "metric", *label_keys]
        gauges = {name: GaugeMetricFamily(metric, doc, labels=series_labels)
                  for name, metric, doc in SLI_GAUGES}
        calibration_gauges = {name: GaugeMetricFamily(metric, doc, labels=series_labels)
                              for name, metric, doc in CALIBRATION_GAUGES}
        summary = Metric("slostream_sli_window_value",
                         "Values of the last closed report window: quantiles (DDSketch, 1% relative "
                         "accuracy), count and sum.", "summary")
        window_end = GaugeMetricFamily("slostream_sli_window_end_timestamp_seconds",
                                       "End of the last closed report window (Unix seconds).",
                                       labels=series_labels)
        # Per-series samples for at most metrics_series_limit series (in the order they were first
        # seen), so a scrape stays small at any cardinality; the SLI topic carries every series.
        room = ingest.settings.metrics_series_limit
        omitted = 0
        for snap in snapshots:
            if snap.newest_event_ts > float("-inf"):
                watermark.add_metric([str(snap.partition)], snap.newest_event_ts - ingest.settings.grace_s)
            for last_report in snap.reports:
                if room == 0:
                    omitted += 1
                    continue
                room -= 1
                report = orjson.loads(last_report)
                labels = [report["service"], report["metric"], *(report["labels"].get(k, "") for k in label_keys)]
                window_end.add_metric(labels, report["window_end"])
                for name, gauge in gauges.items():
                    if report.get(name) is not None:
                        gauge.add_metric(labels, report[name])
                calibration = report.get("calibration") or {}
                for name, gauge in calibration_gauges.items():
                    if calibration.get(name) is not None:
                        gauge.add_metric(labels, calibration[name])
                named = dict(zip(series_labels, labels))
                for q in ("p50", "p90", "p95", "p99"):
                    if report.get(q) is not None:
                        summary.add_sample("slostream_sli_window_value", {**named, "quantile": QUANTILE_LABELS[q]},
                                           report[q])
                summary.add_sample("slostream_sli_window_value_count", named, report.get("value_count", 0))
                if report.get("value_sum") is not None:  # null: not finite (a report from before values were bounded)
                    summary.add_sample("slostream_sli_window_value_sum", named, report["value_sum"])
        yield watermark
        yield GaugeMetricFamily("slostream_sli_series_omitted",
                                "Series with a reported window left out of the per-series SLI metrics "
                                "(metrics_series_limit).", value=omitted)
        yield window_end
        yield from gauges.values()
        yield from calibration_gauges.values()
        yield summary
        yield from _slo_metrics(ingest)


def _slo_metrics(ingest: IngestService):
    labels = ["slo", "service"]
    objective = GaugeMetricFamily("slostream_slo_objective_ratio", "Target good ratio of the SLO.", labels=labels)
    sli = GaugeMetricFamily("slostream_slo_sli_ratio", "Good ratio over the SLO window so far.", labels=labels)
    remaining = GaugeMetricFamily("slostream_slo_error_budget_remaining_ratio",
                                  "Share of the error budget left in the SLO window (negative when overspent).",
                                  labels=labels)
    events = GaugeMetricFamily("slostream_slo_window_events", "Judged events (or slices) in the SLO window.",
                               labels=labels)
    burn = GaugeMetricFamily("slostream_slo_burn_rate", "Error-budget burn rate over an alerting window.",
                             labels=[*labels, "window"])
    for status in ingest.slo_statuses():
        names = [status["slo"], status["service"]]
        objective.add_metric(names, status["objective"])
        events.add_metric(names, status["events"])
        if status["sli"] is not None:
            sli.add_metric(names, status["sli"])
        if status["error_budget"]["remaining_ratio"] is not None:
            remaining.add_metric(names, status["error_budget"]["remaining_ratio"])
        for window, rate in status["burn_rates"].items():
            if rate is not None:
                burn.add_metric([*names, window], rate)
    firing = GaugeMetricFamily("slostream_alerts_firing", "Alerts firing now, by severity (silenced included).",
                               labels=["severity"])
    by_severity = Counter(a["labels"].get("severity", "") for a in ingest.firing_alerts())
    for severity in sorted(set(by_severity) | {"page", "ticket", "warning", "critical"}):
        firing.add_metric([severity], by_severity.get(severity, 0))
    emitted = CounterMetricFamily("slostream_alert_events", "Alert events emitted, by type.", labels=["type"])
    for kind in ("firing", "resolved", "silenced", "acknowledged"):
        emitted.add_metric([kind], ingest.alerts_emitted.get(f"slostream.alert.{kind}", 0))
    breaches = CounterMetricFamily("slostream_breach_events", "Threshold-policy breach and recovery events.",
                                   value=ingest.breaches_emitted)
    drift = CounterMetricFamily("slostream_drift_detections", "Drift detections, by series and aggregate.",
                                labels=["service", "metric", "aggregate", "direction"])
    for labels, count in ingest.drift.detections():
        drift.add_metric(list(labels), count)
    changed = GaugeMetricFamily("slostream_drift_last_change_timestamp_seconds",
                                "Estimated start (event time) of the newest detected change, by series and aggregate.",
                                labels=["service", "metric", "aggregate"])
    for labels, changed_at in ingest.drift.changes():
        changed.add_metric(list(labels), changed_at)
    yield from (objective, sli, remaining, events, burn, firing, emitted, breaches, drift, changed)
    yield from _recommendation_metrics(ingest.recommendation_statuses(), ingest.recommendations_emitted)
    if ingest.sinks is not None:
        sink = CounterMetricFamily("slostream_sink_deliveries", "Alert deliveries to sinks, by outcome.",
                                   labels=["sink", "outcome"])
        dropped = CounterMetricFamily("slostream_sink_dropped",
                                      "Alert deliveries dropped (the oldest) because the sink's queue was full.",
                                      labels=["sink"])
        queued = GaugeMetricFamily("slostream_sink_queued", "Alert deliveries waiting in the sink's queue.",
                                   labels=["sink"])
        for target in ingest.sinks.sinks:
            sink.add_metric([target.name, "delivered"], target.delivered)
            sink.add_metric([target.name, "failed"], target.failed)
            dropped.add_metric([target.name], target.dropped)
            queued.add_metric([target.name], len(target.queue))
        yield from (sink, dropped, queued)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _standing_rate(data: dict) -> float:
    """The predicted violation rate of the level in force (the recommended one without a policy)."""
    return (data["predicted"]["current"] or data["predicted"]["recommended"])["violation_rate"]


def _recommendation_metrics(latest: list[dict], emitted: int):
    """The levels and predicted violation rates of the newest recommendation of every target (``kind``
    policy or slo, ``target`` its name). A policy over label-split series has one model per series;
    the series of the worst (highest) predicted rate at the current level stands for them."""
    labels = ["kind", "target", "level", "service", "metric"]
    current = GaugeMetricFamily("slostream_threshold_current", "A policy level or SLO threshold in force, by target.",
                                labels=labels)
    recommended = GaugeMetricFamily("slostream_threshold_recommended", "The newest recommended level, by target.",
                                    labels=labels)
    predicted = GaugeMetricFamily("slostream_threshold_predicted_violation_ratio",
                                  "Predicted share of windows (policies) or events (SLOs) over the horizon on the "
                                  "wrong side of a level.",
                                  labels=[*labels, "threshold"])
    worst: dict[tuple, dict] = {}
    for data in latest:
        names = (data["target"]["kind"], data["target"]["name"], data["target"]["level"], data["service"],
                 data["metric"])
        held = worst.get(names)
        if held is None or _standing_rate(data) > _standing_rate(held):
            worst[names] = data
    error = GaugeMetricFamily("slostream_threshold_prediction_relative_error",
                              "|predicted - actual| / actual violation rate of the newest scored recommendation.",
                              labels=[*labels, "threshold"])
    coverage = GaugeMetricFamily("slostream_threshold_model_interval_coverage_ratio",
                                 "Share of scored predictions whose 95% interval held the actual rate.", labels=labels)
    running = GaugeMetricFamily("slostream_threshold_model_mean_relative_error",
                                "Running mean (newest weighs 0.2) of the relative error of scored predictions.",
                                labels=labels)
    for names, data in sorted(worst.items()):
        names = list(names)
        if data["current"] is not None:  # None: a model without a policy
            current.add_metric(names, data["current"])
        recommended.add_metric(names, data["recommended"])
        for which in ("current", "recommended"):
            if data["predicted"][which] is not None:
                predicted.add_metric([*names, which], data["predicted"][which]["violation_rate"])
            scored = data["last_score"]
            if scored is not None and scored[which] is not None and scored[which]["relative_error"] is not None:
                error.add_metric([*names, which], scored[which]["relative_error"])
        accuracy = data["accuracy"]
        if accuracy["scored"]:
            coverage.add_metric(names, accuracy["covered"] / accuracy["scored"])
        if accuracy["mean_relative_error"] is not None:
            running.add_metric(names, accuracy["mean_relative_error"])
    count = CounterMetricFamily("slostream_recommendation_events", "Recommendation and score events emitted.",
                                value=emitted)
    yield from (current, recommended, predicted, error, coverage, running, count)

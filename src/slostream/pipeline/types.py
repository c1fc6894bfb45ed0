"""The pipeline's records in and out, and its configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from slostream.core.buckets import Resolution
from slostream.core.drift_rules import DriftRules
from slostream.core.objectives import Policy, Slo

RELATIVE_ACCURACY = 0.01  # of every quantile sketch
# Within a base bucket, SLOs are judged at most this often per partition (wall time); the alert
# latency goal is one second.
EVALUATION_INTERVAL_S = 0.1


class SourceRecord(msgspec.Struct, frozen=True, gc=False):
    """One record as read from Kafka. A struct without garbage-collector tracking: the worker makes
    one per record read (a NamedTuple cost five times as much)."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # Unix seconds
    key: bytes | None
    value: bytes | None
    headers: tuple = ()  # (name, bytes) pairs


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline reads of the worker's settings. It has no defaults of its own: it is made
    from ``Settings`` (``slostream.config.pipeline_config``), whose defaults are the only ones."""

    resolutions: tuple[Resolution, ...]
    report_window_s: int
    grace_s: float
    idle_after_s: float
    label_keys: tuple[str, ...]
    max_record_bytes: int
    max_future_skew_s: float
    max_deadletter_bytes: int  # of the rejected input, in each field of a dead letter
    max_state_bytes: int  # key and value of a state record: the changelog takes no larger one
    max_name_bytes: int  # UTF-8 bytes of a service, metric, id, label key or label value
    max_labels: int  # labels of a measurement
    source: str
    slos: tuple[Slo, ...]
    policies: tuple[Policy, ...]
    models: tuple[Policy, ...]  # threshold models without a policy: policies with neither level
    alert_cooldown_s: float
    escalate_after_s: float | None
    partitions: int  # of the measurement topic: who owns which service
    series_ttl_s: float  # wall time of quiet after which a series with nothing pending is evicted
    drift: DriftRules  # on by default: every series' p95 and error ratio
    calibration_bins: int  # equal-width bins of [0, 1] of the expected calibration error
    calibration_bound_c: float  # c of ece_bound = max(0.015, c * sqrt(bins / n))
    calibration_weekly_alpha: float  # significance of the weekly calibration tests (``CalibrationWeeks``)
    threshold_models: bool  # a threshold model on every policy's aggregate
    recommend_strategy: str  # core.recommend.STRATEGIES
    recommend_every_s: float  # event time between scheduled recommendations
    recommend_horizon_s: float  # what a recommendation predicts

    @property
    def max_read_ahead_s(self) -> float:
        """How far (record time) a partition is read past what every partition has read
        (``alignment.read_ahead_limits``): a memory bound, not a count's. Half an SLO's base ring,
        the other half for producers' clocks and flush delays, which put event time apart from
        record time: so the buckets a series holds open normally fit the ring (``core.windows``
        spills the rest)."""
        return self.resolutions[0].retention / 2


@dataclass
class Output:
    sli: list[tuple[bytes, dict]] = field(default_factory=list)  # (key, event)
    deadletter: list[tuple[bytes, dict]] = field(default_factory=list)
    alerts: list[tuple[bytes, dict]] = field(default_factory=list)
    # State writes to make durable before ``alerts`` are sent (``Alerting``): (partition, key, value)
    alert_log: list[tuple[int, str, bytes]] = field(default_factory=list)
    breaches: list[tuple[bytes, dict]] = field(default_factory=list)
    drift: list[tuple[bytes, dict]] = field(default_factory=list)
    recommendations: list[tuple[bytes, dict]] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)  # forwarded measurements and progress
    accepted: int = 0
    skipped_replay: int = 0
    forwarded: int = 0  # measurements sent on to their owner
    forward_duplicates: int = 0  # forwarded measurements this owner already held (a source replayed)
    evicted: int = 0  # series dropped after series_ttl_s of quiet
    dropped_label_keys: int = 0  # restored series kept under other label_keys, dropped
    # (service, metric) whose last series here was evicted: what the worker keeps of them goes too.
    retired_groups: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


class Forward(NamedTuple):
    """A record to produce to partition ``partition`` of the measurement topic."""

    partition: int
    value: bytes
    headers: list[tuple[str, bytes]]
    measurements: int


@dataclass(frozen=True)
class Snapshot:
    """What the worker's web views and metrics read of a partition."""

    partition: int
    series: int  # held
    applied_offset: int
    newest_event_ts: float
    aligned_until: float
    statuses: dict[str, list[dict]]  # by evaluator kind, the statuses asked for
    firing: list[dict]  # alerts firing
    silences: list[dict]
    reports: list[bytes]  # each series' newest SLI report (JSON), when asked for

"""Per-partition orchestration: records in, SLI and dead-letter events out. No I/O.

Effectively-once state: every base bucket remembers the last source offset it
holds and every coarser bucket the last base bucket it absorbed; the partition
checkpoint, written last, remembers the offset up to which everything was
persisted. After a crash the consumer resumes at the committed offset (never
past the checkpoint) and each bucket skips what it already holds, so counts come
out exact even when the crash tore a checkpoint in half.
"""

from __future__ import annotations

import base64
import operator
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
import numpy as np
import orjson

from slostream.core.alerts import AlertBook, AlertEvent, Condition
from slostream.core.control import Command, CommandError
from slostream.core.events import cloud_event, event_id
from slostream.core.measurement import Columns, MeasurementDecoder, Reason, Rejection
from slostream.core.objectives import GoodRule, Policy, Slo, Tally
from slostream.core.policy import PolicyWatch, aggregate_value
from slostream.core.tracker import SloTracker
from slostream.core.watermark import Watermark
from slostream.core.windows import DEFAULT_RESOLUTIONS, SUM, VALUES, Resolution, SeriesWindows, bucket_start

SEP = "\x1f"
_SERVICE, _METRIC = operator.attrgetter("service"), operator.attrgetter("metric")
STATE_VERSION = 1
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))


class SourceRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: float  # Unix seconds
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class PipelineConfig:
    resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS
    relative_accuracy: float = 0.01
    report_window_s: int = 60
    grace_s: float = 30.0
    idle_after_s: float = 5.0
    label_keys: tuple[str, ...] = ()
    max_record_bytes: int = 1 << 20
    max_future_skew_s: float = 300.0
    max_deadletter_bytes: int = 64 << 10
    source: str = "urn:slostream"
    slos: tuple[Slo, ...] = ()
    policies: tuple[Policy, ...] = ()
    alert_cooldown_s: float = 300.0
    escalate_after_s: float | None = None
    evaluation_interval_s: float = 0.1


@dataclass
class Output:
    sli: list[tuple[bytes, dict]] = field(default_factory=list)  # (key, event)
    deadletter: list[tuple[bytes, dict]] = field(default_factory=list)
    alerts: list[tuple[bytes, dict]] = field(default_factory=list)
    breaches: list[tuple[bytes, dict]] = field(default_factory=list)
    accepted: int = 0
    skipped_replay: int = 0


class Series:
    __slots__ = ("ident", "key", "service", "metric", "labels", "windows",
                 "pending_reports", "last_report", "trackers", "watches")

    def __init__(self, ident: tuple, key: str, service: str, metric: str, labels: dict,
                 windows: SeriesWindows):
        self.ident = ident  # the in-memory lookup key
        self.key = key
        self.service = service
        self.metric = metric
        self.labels = labels
        self.windows = windows
        self.pending_reports: set[int] = set()
        self.last_report: dict | None = None
        self.trackers: list[SloTracker] = []  # SLOs this series feeds
        self.watches: list[PolicyWatch] = []  # policies watching this series

    def header(self) -> dict:
        return {
            "v": STATE_VERSION,
            "service": self.service,
            "metric": self.metric,
            "labels": self.labels,
            "pending_reports": sorted(self.pending_reports),
            "last_report": self.last_report,
            "watches": {w.policy.name: w.to_state() for w in self.watches},
            "windows": self.windows.header_state(),
        }


class PartitionProcessor:
    """All series of one measurement partition, their watermark and offsets."""

    def __init__(self, partition: int, config: PipelineConfig, now: float):
        if config.report_window_s % config.resolutions[0].width:
            raise ValueError("report_window_s must be a multiple of the base bucket width")
        self.partition = partition
        self.config = config
        self.decoder = MeasurementDecoder(config.max_record_bytes, config.max_future_skew_s)
        self.series: dict[tuple, Series] = {}
        self.watermark = Watermark(config.grace_s)
        self.applied_offset = -1  # last source offset fully processed
        self.last_activity = now
        self._dirty: set[tuple] = set()
        self._closed_horizon = 0
        self.slos_for: dict[tuple[str, str], list[Slo]] = {}
        for slo in config.slos:
            self.slos_for.setdefault((slo.service, slo.metric), []).append(slo)
        self.policies_for: dict[tuple[str, str], list[Policy]] = {}
        for policy in config.policies:
            self.policies_for.setdefault((policy.service, policy.metric), []).append(policy)
        self.trackers: dict[str, SloTracker] = {}
        self.book = AlertBook(config.alert_cooldown_s, config.escalate_after_s)
        self.control_offset = -1  # last control command applied
        self._book_dirty = False
        self._touched: set[str] = set()  # trackers with measurements since their last evaluation
        self._last_evaluation = -np.inf  # wall time

    # --- processing -------------------------------------------------------

    def process(self, records: list[SourceRecord], now: float) -> Output:
        out = Output()
        fresh = [r for r in records if r.offset > self.applied_offset]
        if not fresh:
            return out
        self.last_activity = now
        batch = self.decoder.decode([(r.value, r.timestamp) for r in fresh])
        for rejection in batch.rejections:
            out.deadletter.append(self._deadletter(fresh[rejection.record], rejection))
        cols = batch.columns
        record_offsets = np.fromiter((r.offset for r in fresh), dtype=np.int64, count=len(fresh))
        numbering = self._number(cols.measurements) if len(cols) else None
        for start, stop, part, enters_bucket in self._evaluation_slices(cols):
            if enters_bucket:  # the bucket before is complete: judge it, as live would have
                self._close_and_evaluate(out, now, force=True)
            self._ingest(fresh, record_offsets, part, out, numbering[0][start:stop], numbering[1])
        self.applied_offset = fresh[-1].offset
        self._close_and_evaluate(out, now)
        return out

    def _close_and_evaluate(self, out: Output, now: float, force: bool = False) -> None:
        """Close and report; judge the SLOs at bucket ends and, within a bucket, at most every
        ``evaluation_interval_s`` of wall time (a busy stream gets many batches per second)."""
        if self._close_and_report(out):
            # Closing moves no count, but it judges timeslices and lets time pass for SLOs
            # that got no data (no-data alerts, burn windows sliding past old errors).
            horizon = self._closed_horizon
            stale = [name for name, t in self.trackers.items()
                     if t.slices is not None or t.evaluated_at < horizon]
            self._touched.update(stale)
            force = force or bool(stale)
        if force:
            self._evaluate(out, self._touched)
        elif now - self._last_evaluation >= self.config.evaluation_interval_s:
            self._evaluate(out, self._touched)
            self._last_evaluation = now

    def _evaluation_slices(self, cols: Columns):
        """Cut a batch where its event time enters a new base bucket (when SLOs are tracked),
        saying which parts start such a bucket. SLOs are judged at every such point, so a
        backlog is judged bucket by bucket and a replay judges exactly where the original
        run did, however the records were batched."""
        if not len(cols):
            return
        if not self.slos_for:
            yield 0, len(cols), cols, False
            return
        width = self.config.resolutions[0].width
        seen = np.maximum.accumulate(np.concatenate(([self.watermark.max_event_ts], cols.ts)))
        with np.errstate(invalid="ignore"):
            cuts = np.flatnonzero(np.diff(np.floor(seen / width)) > 0).tolist()
        starts = cuts if cuts and cuts[0] == 0 else [0, *cuts]
        for start, stop in zip(starts, [*starts[1:], len(cols)]):
            part = cols if (start, stop) == (0, len(cols)) else cols.slice(start, stop)
            yield start, stop, part, start in cuts and self.watermark.max_event_ts > -np.inf

    def _ingest(self, records: list[SourceRecord], record_offsets: np.ndarray, cols: Columns, out: Output,
                ids: np.ndarray, keys: list[tuple]) -> None:
        """Window one slice of a batch; ``ids``/``keys`` number its series (see ``_number``)."""
        width = self.config.resolutions[0].width
        before = self.watermark.observe(cols.ts)
        horizon = np.floor(before / width) * width
        late = cols.ts < horizon
        offsets = record_offsets[cols.record]
        for i in np.flatnonzero(late).tolist():
            m = cols.measurements[i]
            rejection = Rejection(
                int(cols.record[i]), None if cols.position[i] < 0 else int(cols.position[i]), Reason.TOO_LATE,
                f"ts {cols.ts[i]:.3f} is before the watermark's closed horizon {horizon[i]:.0f}",
                msgspec.to_builtins(m),
            )
            out.deadletter.append(self._deadletter(records[rejection.record], rejection))
        idx = np.flatnonzero(~late)
        if not idx.size:
            return
        sids = ids[idx]
        # Series are made only for accepted measurements: a late-only key creates none.
        series_of = {i: self._get_series(keys[i]) for i in np.unique(sids).tolist()}
        starts = (np.floor(cols.ts[idx] / width) * width).astype(np.int64)
        order = np.lexsort((offsets[idx], starts, sids))
        sids, starts, idx = sids[order], starts[order], idx[order]
        bounds = [0, *(np.flatnonzero((np.diff(sids) != 0) | (np.diff(starts) != 0)) + 1).tolist(), len(idx)]
        # In (series, bucket, offset) order every group is a contiguous run, read through views.
        values, oks, run_offsets = cols.values[idx], cols.oks[idx], offsets[idx]
        newest = np.maximum.reduceat(cols.ts[idx], bounds[:-1]) if self.trackers else None
        tallies: dict[GoodRule, Tally] = {}  # each SLO rule judges the whole slice once
        added = 0
        slo_members: dict[str, list[np.ndarray]] = {}
        for number, (a, b) in enumerate(zip(bounds, bounds[1:])):
            series = series_of[sids[a]]
            start = int(starts[a])
            added += series.windows.add(start, values[a:b], oks[a:b], run_offsets[a:b])
            self._dirty.add(series.ident)
            for tracker in series.trackers:
                if tracker.sources == 1:
                    rule = tracker.slo.good
                    tally = tallies.get(rule) or tallies.setdefault(rule, Tally(rule.flags(values, oks)))
                    tracker.feed(start, values[a:b], oks[a:b], run_offsets[a:b], float(newest[number]),
                                 tally.counts(a, b))
                    self._touched.add(tracker.slo.name)
                else:
                    slo_members.setdefault(tracker.slo.name, []).append(idx[a:b])
        out.accepted += added
        out.skipped_replay += len(idx) - added
        for name, parts in slo_members.items():
            self._feed(self.trackers[name], np.concatenate(parts), cols, offsets)

    def _feed(self, tracker: SloTracker, members: np.ndarray, cols: Columns, offsets: np.ndarray) -> None:
        """One SLO gathers every series it covers; each base bucket is fed once, in offset order,
        so its replay mark stays exact."""
        width = self.config.resolutions[0].width
        starts = (np.floor(cols.ts[members] / width) * width).astype(np.int64)
        order = np.lexsort((offsets[members], starts))
        members, starts = members[order], starts[order]
        for group in np.split(np.arange(len(members)), np.flatnonzero(np.diff(starts)) + 1):
            chosen = members[group]
            tracker.feed(int(starts[group[0]]), cols.values[chosen], cols.oks[chosen], offsets[chosen],
                         float(cols.ts[chosen].max()))
        self._touched.add(tracker.slo.name)

    def _number(self, ms: list) -> tuple[np.ndarray, list[tuple]]:
        """A dense series number per measurement, and each number's series key.

        Each element maps to the position of the first occurrence of its key, all
        in C (``map`` over ``dict.setdefault``); np.unique then numbers the keys.
        Without label keys, service and metric are numbered apart, which avoids a
        tuple per measurement. Done once per batch, however the batch is cut.
        """
        n = len(ms)
        positions = range(n)
        label_keys = self.config.label_keys
        if label_keys:
            keys = [(m.service, m.metric, tuple((m.labels or {}).get(k, "") for k in label_keys)) for m in ms]
            codes = np.fromiter(map({}.setdefault, keys, positions), dtype=np.int64, count=n)
        else:
            services = np.fromiter(map({}.setdefault, map(_SERVICE, ms), positions), dtype=np.int64, count=n)
            metrics = np.fromiter(map({}.setdefault, map(_METRIC, ms), positions), dtype=np.int64, count=n)
            codes = services * n + metrics
        _, first, ids = np.unique(codes, return_index=True, return_inverse=True)
        if label_keys:
            return ids, [keys[i] for i in first.tolist()]
        return ids, [(ms[i].service, ms[i].metric) for i in first.tolist()]

    def _get_series(self, key: tuple) -> Series:
        series = self.series.get(key)
        if series is None:
            service, metric = key[0], key[1]
            labels = dict(zip(self.config.label_keys, key[2])) if len(key) > 2 else {}
            windows = SeriesWindows(self.config.resolutions, self.config.relative_accuracy)
            series = Series(key, _series_key(service, metric, labels), service, metric, labels, windows)
            self._attach(series)
            self.series[key] = series
        return series

    def _attach(self, series: Series) -> None:
        """Wire a series to the SLOs it feeds and the policies that watch it."""
        for slo in self.slos_for.get((series.service, series.metric), ()):
            tracker = self.trackers.get(slo.name)
            if tracker is None:
                tracker = self.trackers[slo.name] = SloTracker(slo, self.config.resolutions)
            tracker.sources += 1
            series.trackers.append(tracker)
        series.watches = [PolicyWatch(p) for p in self.policies_for.get((series.service, series.metric), ())]

    def tick(self, now: float) -> Output:
        """Advance event time for a quiet partition and close what is due."""
        out = Output()
        if self.watermark.advance_idle(now, self.last_activity, self.config.idle_after_s):
            self._close_and_report(out)
            self._evaluate(out, self.trackers)
            self._last_evaluation = now
        elif self._touched:  # the tail of the last batch, if the rate limit held it back
            self._close_and_evaluate(out, now, force=True)
        return out

    def evaluate_pending(self, now: float) -> Output:
        """Judge SLOs the wall-clock limiter held back, once the interval has passed."""
        out = Output()
        if self._touched:
            self._close_and_evaluate(out, now)
        return out

    @property
    def event_now(self) -> float:
        """Event time now: the newest event seen, or the idle-advanced time when quiet."""
        return max(self.watermark.max_event_ts, self.watermark.value + self.watermark.grace)

    def _close_and_report(self, out: Output) -> bool:
        """Close what the watermark passed; report due SLI windows; judge policies.
        Returns whether the closed horizon moved."""
        width = self.config.resolutions[0].width
        if self.watermark.value == -np.inf:
            return False
        horizon = bucket_start(self.watermark.value, width)
        if horizon <= self._closed_horizon:
            return False
        self._closed_horizon = horizon
        report = self.config.report_window_s
        for tracker in self.trackers.values():
            tracker.close_until(self.watermark.value)
        for key, series in self.series.items():
            closed = series.windows.close_until(self.watermark.value)
            if series.watches:
                self._judge_policies(series, out)
            if not closed and not series.pending_reports:
                continue
            series.pending_reports.update(bucket_start(s, report) for s in closed)
            due = sorted(r for r in series.pending_reports if r + report <= series.windows.closed_until)
            for start in due:
                series.pending_reports.discard(start)
                out.sli.append(self._sli_event(series, start, start + report))
            self._dirty.add(key)
        return True

    def _judge_policies(self, series: Series, out: Output) -> None:
        closed_until = series.windows.closed_until
        conditions: list[Condition] = []
        for watch in series.watches:
            policy = watch.policy
            window = policy.window_s
            if closed_until < watch.evaluated_until + window:
                continue  # no new window closed
            last = (closed_until // window) * window
            first = max(watch.evaluated_until + window, last - 10 * window) if watch.evaluated_until else last
            changed = False
            for end in range(first, last + 1, window):
                if end <= watch.evaluated_until:
                    continue
                agg = series.windows.aggregate(end - window, end, with_sketch=policy.aggregate.startswith("p"))
                value = aggregate_value(agg, policy.aggregate) if agg.count else (
                    0.0 if policy.aggregate == "throughput" else None)
                transition = watch.observe(value)
                watch.evaluated_until = end
                changed = True
                if transition is not None:
                    out.breaches.append(self._breach_event(series, watch, transition, end))
            if changed:
                self._dirty.add(series.ident)
                conditions.extend(watch.conditions(series.labels))
        if conditions:
            self._alert_events(self.book.evaluate(self.event_now, conditions), out)

    def _breach_event(self, series: Series, watch: PolicyWatch, transition: tuple[str, str],
                      end: int) -> tuple[bytes, dict]:
        policy = watch.policy
        previous, level = transition
        kind = "recovered" if level == "ok" else "started"
        data = {
            "policy": policy.name,
            "service": series.service,
            "metric": series.metric,
            "labels": series.labels,
            "aggregate": policy.aggregate,
            "direction": policy.direction,
            "warning": policy.warning,
            "critical": policy.critical,
            "consecutive": policy.consecutive,
            "level": level,
            "previous_level": previous,
            "value": watch.last_value,
            "window_start": end - policy.window_s,
            "window_end": end,
        }
        event = cloud_event(f"slostream.breach.{kind}", self.config.source,
                            event_id("breach", policy.name, series.key, end, level), end, data, subject=series.key)
        return series.service.encode(), event

    def _evaluate(self, out: Output, names) -> None:
        """Budgets, burn rates and alert conditions of the named SLOs at event time now."""
        if not names or self.watermark.max_event_ts == -np.inf:
            return
        now = self.event_now
        conditions: list[Condition] = []
        for name in list(names):
            conditions.extend(self.trackers[name].judge(now))
        self._touched.clear()
        self._alert_events(self.book.evaluate(now, conditions), out)

    def _alert_events(self, events: list[AlertEvent], out: Output) -> None:
        for alert_event in events:
            alert = alert_event.alert
            # Named by base bucket: a replay after a crash, batched differently, may judge a few
            # seconds apart within the bucket but repeats the same id.
            width = self.config.resolutions[0].width
            id_ = event_id("alert", alert_event.type, alert["fingerprint"],
                           bucket_start(alert_event.alert_start, width), bucket_start(alert_event.time, width))
            event = cloud_event(f"slostream.alert.{alert_event.type}", self.config.source, id_,
                                alert_event.time, alert, subject=alert["fingerprint"])
            out.alerts.append((alert["labels"].get("service", "").encode(), event))
        if events:
            self._book_dirty = True

    # --- operator commands --------------------------------------------------

    def apply_control(self, record: SourceRecord, command: Command | CommandError) -> Output:
        """Apply one control command once (its offset is persisted with the state).

        Every partition applies every command; only partition 0 dead-letters a
        malformed one, so it is reported once.
        """
        out = Output()
        if record.offset <= self.control_offset:
            return out
        self.control_offset = record.offset
        self._book_dirty = True
        if isinstance(command, CommandError):
            if self.partition == 0:
                rejection = Rejection(0, None, Reason.BAD_COMMAND, command.message, None)
                out.deadletter.append(self._deadletter(record, rejection))
            return out
        now = self.event_now if self.watermark.max_event_ts > -np.inf else command.time
        if command.kind == "silence":
            events = self.book.silence(now, command.silence)
        elif command.kind == "unsilence":
            events = self.book.unsilence(now, command.silence_id)
        else:
            events = self.book.acknowledge_matching(now, command.fingerprint, command.matchers, command.by)
        self._alert_events(events, out)
        return out

    def _sli_event(self, series: Series, start: int, end: int) -> tuple[bytes, dict]:
        agg = series.windows.aggregate(start, end)
        data = {
            "service": series.service,
            "metric": series.metric,
            "labels": series.labels,
            "window_start": start,
            "window_end": end,
            "count": agg.count,
            "ok": agg.ok,
            "errors": agg.errors,
            "error_ratio": agg.error_ratio,
            "throughput_per_s": agg.throughput_per_s,
            "mean": agg.mean,
            "min": agg.min,
            "max": agg.max,
        }
        for name, q in QUANTILES:
            data[name] = agg.quantile(q)
        # The summary on /metrics needs the value count and sum, not part of the event.
        series.last_report = {**data, "value_count": int(agg.stats[VALUES]), "value_sum": float(agg.stats[SUM])}
        event = cloud_event(
            "slostream.sli.window", self.config.source, event_id("sli", series.key, start),
            end, data, subject=series.key,
        )
        return series.service.encode(), event

    def _deadletter(self, record: SourceRecord, rejection: Rejection) -> tuple[bytes, dict]:
        raw = record.value or b""
        limit = self.config.max_deadletter_bytes
        data = {
            "reason": rejection.reason.value,
            "message": rejection.message,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "index": rejection.index,
            "timestamp": record.timestamp,
            "key_b64": None if record.key is None else base64.b64encode(record.key).decode(),
            "value_b64": base64.b64encode(raw[:limit]).decode(),
            "value_size": len(raw),
            "value_truncated": len(raw) > limit,
            "element": _jsonable(rejection.element),
        }
        event = cloud_event(
            "slostream.deadletter", self.config.source,
            event_id("deadletter", record.topic, record.partition, record.offset, rejection.index),
            record.timestamp, data,
        )
        return rejection.reason.value.encode(), event

    # --- state ------------------------------------------------------------

    def checkpoint(self) -> tuple[list[tuple[str, bytes]], int]:
        """Changed state as (key, value) writes, and the offset they make safe.

        Everything up to and including the returned offset is in the writes, so
        the consumer may commit ``offset + 1`` once they are durable.
        """
        p = self.partition
        writes: list[tuple[str, bytes]] = []
        for key in sorted(self._dirty):
            series = self.series[key]
            for level, slot, state in series.windows.drain_dirty():
                writes.append((f"{p}{SEP}b{SEP}{level}{SEP}{slot}{SEP}{series.key}", orjson.dumps(state)))
            writes.append((f"{p}{SEP}h{SEP}{series.key}", orjson.dumps(series.header())))
        self._dirty.clear()
        for name, tracker in self.trackers.items():
            if not tracker.dirty:
                continue
            for kind, level, slot, state in tracker.drain_dirty():
                writes.append((f"{p}{SEP}s{SEP}{kind}{SEP}{level}{SEP}{slot}{SEP}{name}", orjson.dumps(state)))
            writes.append((f"{p}{SEP}S{SEP}{name}", orjson.dumps(tracker.header_state())))
        if self._book_dirty:
            writes.append((f"{p}{SEP}a", orjson.dumps(self.book.to_state())))
            self._book_dirty = False
        partition_state = {
            "v": STATE_VERSION,
            "applied_offset": self.applied_offset,
            "watermark": self.watermark.to_state(),
            "control_offset": self.control_offset,
        }
        writes.append((f"{p}{SEP}c", orjson.dumps(partition_state)))
        return writes, self.applied_offset

    @classmethod
    def restore(cls, partition: int, config: PipelineConfig, items, now: float) -> "PartitionProcessor":
        """Rebuild from persisted (key, value) pairs of this partition."""
        proc = cls(partition, config, now)
        headers: dict[str, dict] = {}
        slots: dict[str, list] = {}
        tracker_headers: dict[str, dict] = {}
        tracker_slots: dict[str, list] = {}
        prefix = f"{partition}{SEP}"
        for key, value in items:
            if not key.startswith(prefix):
                continue
            kind, _, rest = key[len(prefix):].partition(SEP)
            if kind == "c":
                state = orjson.loads(value)
                proc.applied_offset = state["applied_offset"]
                proc.control_offset = state.get("control_offset", -1)
                proc.watermark = Watermark.from_state(state["watermark"])
                if proc.watermark.value > -np.inf:
                    proc._closed_horizon = bucket_start(proc.watermark.value, config.resolutions[0].width)
            elif kind == "h":
                headers[rest] = orjson.loads(value)
            elif kind == "b":
                level, slot, series_key = rest.split(SEP, 2)
                slots.setdefault(series_key, []).append((int(level), int(slot), orjson.loads(value)))
            elif kind == "S":
                tracker_headers[rest] = orjson.loads(value)
            elif kind == "s":
                windows_kind, level, slot, name = rest.split(SEP, 3)
                tracker_slots.setdefault(name, []).append((windows_kind, int(level), int(slot), orjson.loads(value)))
            elif kind == "a":
                proc.book = AlertBook.from_state(orjson.loads(value), config.alert_cooldown_s,
                                                 config.escalate_after_s)
        for slo in config.slos:
            header = tracker_headers.get(slo.name)
            if header is None:
                continue
            tracker = SloTracker.restore(slo, config.resolutions, header, tracker_slots.get(slo.name, []))
            if tracker is not None:
                proc.trackers[slo.name] = tracker
        for series_key, header in headers.items():
            windows = SeriesWindows.from_states(header["windows"], slots.get(series_key, []))
            labels = tuple(header["labels"].get(k, "") for k in config.label_keys)
            ident = (header["service"], header["metric"], labels) if config.label_keys else (
                header["service"], header["metric"])
            series = Series(ident, series_key, header["service"], header["metric"], header["labels"], windows)
            series.pending_reports = set(header["pending_reports"])
            series.last_report = header["last_report"]
            proc._attach(series)
            watched = header.get("watches", {})
            series.watches = [PolicyWatch.from_state(w.policy, watched[w.policy.name])
                              if w.policy.name in watched else w for w in series.watches]
            proc.series[ident] = series
        return proc


def fence_key(partition: int) -> str:
    """A changelog key that ends a checkpoint on brokers that need it (see the worker); restore
    skips it like any key it does not know."""
    return f"{partition}{SEP}fence"


def _series_key(service: str, metric: str, labels: dict) -> str:
    return orjson.dumps([service, metric, labels], option=orjson.OPT_SORT_KEYS).decode()


def _jsonable(element):
    if element is None:
        return None
    try:
        return orjson.loads(orjson.dumps(element))
    except (TypeError, orjson.JSONEncodeError):
        return repr(element)

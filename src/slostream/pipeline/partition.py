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

from slostream.core.events import cloud_event, event_id
from slostream.core.measurement import Columns, MeasurementDecoder, Reason, Rejection
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


@dataclass
class Output:
    sli: list[tuple[bytes, dict]] = field(default_factory=list)  # (key, event)
    deadletter: list[tuple[bytes, dict]] = field(default_factory=list)
    accepted: int = 0
    skipped_replay: int = 0


class Series:
    __slots__ = ("ident", "key", "service", "metric", "labels", "windows",
                 "pending_reports", "last_report")

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

    def header(self) -> dict:
        return {
            "v": STATE_VERSION,
            "service": self.service,
            "metric": self.metric,
            "labels": self.labels,
            "pending_reports": sorted(self.pending_reports),
            "last_report": self.last_report,
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
        if len(cols):
            self._ingest(fresh, cols, out)
        self.applied_offset = fresh[-1].offset
        self._close_and_report(out)
        return out

    def _ingest(self, records: list[SourceRecord], cols: Columns, out: Output) -> None:
        width = self.config.resolutions[0].width
        before = self.watermark.observe(cols.ts)
        horizon = np.floor(before / width) * width
        late = cols.ts < horizon
        offsets = np.asarray([r.offset for r in records], dtype=np.int64)[cols.record]
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
        accepted = cols.measurements if idx.size == len(cols) else [cols.measurements[i] for i in idx.tolist()]
        sids, series_list = self._series_ids(accepted)
        starts = (np.floor(cols.ts[idx] / width) * width).astype(np.int64)
        order = np.lexsort((offsets[idx], starts, sids))
        sids, starts, idx = sids[order], starts[order], idx[order]
        boundaries = np.flatnonzero((np.diff(sids) != 0) | (np.diff(starts) != 0)) + 1
        values, oks = cols.values, cols.oks
        added = 0
        for group in np.split(np.arange(len(idx)), boundaries):
            first = group[0]
            series = series_list[sids[first]]
            members = idx[group]
            added += series.windows.add(int(starts[first]), values[members], oks[members], offsets[members])
            self._dirty.add(series.ident)
        out.accepted += added
        out.skipped_replay += len(idx) - added

    def _series_ids(self, ms: list) -> tuple[np.ndarray, list[Series]]:
        """A dense series number per measurement, and the series in that order.

        Each element maps to the position of the first occurrence of its key, all
        in C (``map`` over ``dict.setdefault``); np.unique then numbers the keys.
        Without label keys, service and metric are numbered apart, which avoids a
        tuple per measurement.
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
            series = [self._get_series(keys[i]) for i in first.tolist()]
        else:
            series = [self._get_series((ms[i].service, ms[i].metric)) for i in first.tolist()]
        return ids, series

    def _get_series(self, key: tuple) -> Series:
        series = self.series.get(key)
        if series is None:
            service, metric = key[0], key[1]
            labels = dict(zip(self.config.label_keys, key[2])) if len(key) > 2 else {}
            windows = SeriesWindows(self.config.resolutions, self.config.relative_accuracy)
            series = Series(key, _series_key(service, metric, labels), service, metric, labels, windows)
            self.series[key] = series
        return series

    def tick(self, now: float) -> Output:
        """Advance event time for a quiet partition and close what is due."""
        out = Output()
        if self.watermark.advance_idle(now, self.last_activity, self.config.idle_after_s):
            self._close_and_report(out)
        return out

    def _close_and_report(self, out: Output) -> None:
        width = self.config.resolutions[0].width
        if self.watermark.value == -np.inf:
            return
        horizon = bucket_start(self.watermark.value, width)
        if horizon <= self._closed_horizon:
            return
        self._closed_horizon = horizon
        report = self.config.report_window_s
        for key, series in self.series.items():
            closed = series.windows.close_until(self.watermark.value)
            if not closed and not series.pending_reports:
                continue
            series.pending_reports.update(bucket_start(s, report) for s in closed)
            due = sorted(r for r in series.pending_reports if r + report <= series.windows.closed_until)
            for start in due:
                series.pending_reports.discard(start)
                out.sli.append(self._sli_event(series, start, start + report))
            self._dirty.add(key)

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
        partition_state = {
            "v": STATE_VERSION,
            "applied_offset": self.applied_offset,
            "watermark": self.watermark.to_state(),
        }
        writes.append((f"{p}{SEP}c", orjson.dumps(partition_state)))
        return writes, self.applied_offset

    @classmethod
    def restore(cls, partition: int, config: PipelineConfig, items, now: float) -> "PartitionProcessor":
        """Rebuild from persisted (key, value) pairs of this partition."""
        proc = cls(partition, config, now)
        headers: dict[str, dict] = {}
        slots: dict[str, list] = {}
        prefix = f"{partition}{SEP}"
        for key, value in items:
            if not key.startswith(prefix):
                continue
            kind, _, rest = key[len(prefix):].partition(SEP)
            if kind == "c":
                state = orjson.loads(value)
                proc.applied_offset = state["applied_offset"]
                proc.watermark = Watermark.from_state(state["watermark"])
                if proc.watermark.value > -np.inf:
                    proc._closed_horizon = bucket_start(proc.watermark.value, config.resolutions[0].width)
            elif kind == "h":
                headers[rest] = orjson.loads(value)
            elif kind == "b":
                level, slot, series_key = rest.split(SEP, 2)
                slots.setdefault(series_key, []).append((int(level), int(slot), orjson.loads(value)))
        for series_key, header in headers.items():
            windows = SeriesWindows.from_states(header["windows"], slots.get(series_key, []))
            labels = tuple(header["labels"].get(k, "") for k in config.label_keys)
            ident = (header["service"], header["metric"], labels) if config.label_keys else (
                header["service"], header["metric"])
            series = Series(ident, series_key, header["service"], header["metric"], header["labels"], windows)
            series.pending_reports = set(header["pending_reports"])
            series.last_report = header["last_report"]
            proc.series[ident] = series
        return proc


def _series_key(service: str, metric: str, labels: dict) -> str:
    return orjson.dumps([service, metric, labels], option=orjson.OPT_SORT_KEYS).decode()


def _jsonable(element):
    if element is None:
        return None
    try:
        return orjson.loads(orjson.dumps(element))
    except (TypeError, orjson.JSONEncodeError):
        return repr(element)

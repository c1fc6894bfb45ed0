"""What a partition persists, and how it is read back: the writes of a checkpoint and a restore
from them (the keys are ``state_keys``'s).

A series' record (version 6) is binary: ``STATE_VERSION`` in a byte; the length of its JSON header
in four bytes (little-endian) and the header (service, metric, labels, newest report); the number
of evaluator sections in a byte, each its kind's name (a byte of length, then the name) and its
state (four bytes of length, then the bytes the evaluator gave); then the windows and clock (the
``TumblingWindows`` state). The windows change with every measurement, the header seldom: only they
are columns, encoded for many series at once. A record of version 5 kept policy watches in the
header (drift state of version 5 is not read: those watches start afresh); one of version 4 or
before is one JSON object, starting with ``{``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import orjson

from slostream.core.alerts import AlertBook
from slostream.core.measurement import MAX_PLAUSIBLE_TS
from slostream.core.tumbling import TumblingWindows
from slostream.core.window_store import WindowStore
from slostream.core.windows import SeriesWindows
from slostream.pipeline import state_keys
from slostream.pipeline.alerting import SentAlert
from slostream.pipeline.alignment import Alignment
from slostream.pipeline.evaluators.policy import PolicyEvaluator
from slostream.pipeline.series import Series, finite_or_none, from_finite, held_json

if TYPE_CHECKING:
    from slostream.pipeline.partition import PartitionProcessor

# 3: reads awaiting alignment per series, progress per partition; 4: tumbling windows in the header;
# 5: a series' record is binary; 6: evaluators' state in sections of the series' record.
STATE_VERSION = 6
_RECORD_VERSION = bytes((STATE_VERSION,))
log = logging.getLogger("slostream")
# The first field of the in-memory key of a restored series kept under other label_keys.
OTHER_LABEL_KEYS = object()
# A series' changes wait unwritten for at most this many report windows of wall time.
UNWRITTEN_REPORT_WINDOWS = 2


class Checkpoints:
    """Checkpoints are numbered; each boundary keeps when it was taken and what a replay from it
    starts with, from the oldest whose changes some series holds unwritten on."""

    def __init__(self, now: float, replay_state: dict, report_window_s: int):
        self.number = 0
        self.boundaries: dict[int, tuple[float, dict]] = {0: (now, replay_state)}
        self.wait_s = UNWRITTEN_REPORT_WINDOWS * report_window_s

    def take(self, store: WindowStore, now: float, replay_state: dict, everything: bool,
             too_large: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict]:
        """A new checkpoint at wall time ``now`` (``replay_state``: what a replay from it starts
        with): the window owners of the series to write (``everything``: all changed ones, but
        those ``too_large`` to write), and the replay state of the oldest checkpoint still needed,
        whose offset the writes make safe."""
        number = self.number
        stale_before = number + 1 if everything else self._stale_before(now)
        dirty, oldest = store.take_writes(number, stale_before, too_large)
        self.number = number + 1
        self.boundaries[number + 1] = (now, replay_state)
        replay_from = number + 1 if oldest is None else oldest
        for boundary in [b for b in self.boundaries if b < replay_from]:
            del self.boundaries[boundary]
        return dirty, self.boundaries[replay_from][1]

    def unwritten_due(self, now: float) -> bool:
        return len(self.boundaries) > 1 and self._stale_before(now) > next(iter(self.boundaries))

    def _stale_before(self, now: float) -> int:
        """The oldest checkpoint whose changes may still wait (``UNWRITTEN_REPORT_WINDOWS``)."""
        return next((b for b, (at, _) in self.boundaries.items() if now - at < self.wait_s), self.number + 1)


class SeriesRecords:
    """The records of the series a checkpoint writes, made as it picks them (their windows encoded
    together): one the changelog would refuse (``max_state_bytes``) while the series waits for a
    lagging partition (hours held open) is not written, and the series' changes wait, holding the
    committed offset back, until alignment releases them (a replay from there redoes them). Each
    series held is logged once. One too large with nothing waiting (a huge name) is written, and
    the producer dead-letters it."""

    def __init__(self):
        self.records: dict[int, tuple[str, bytes]] = {}
        self.held: set[str] = set()  # series whose record was too large at their last checkpoint

    def too_large(self, proc: PartitionProcessor, owners: np.ndarray) -> np.ndarray:
        held = np.zeros(owners.size, dtype=bool)
        self.records = {}
        for i, (owner, windows) in enumerate(zip(owners.tolist(), proc.store.encode(owners))):
            series = proc._series_of_owner[owner]
            key, record = state_keys.series_key(proc.partition, series.key), series_record(proc, series, windows)
            if len(key.encode()) + len(record) <= proc.config.max_state_bytes or not proc.store.read_count[owner]:
                self.records[owner] = key, record
                self.held.discard(series.key)
                continue
            held[i] = True
            if series.key not in self.held:
                self.held.add(series.key)
                log.warning("partition %d: the state of series %s is %d bytes, over max_output_bytes: its changes "
                            "wait unwritten (the committed offset with them) until alignment closes its windows",
                            proc.partition, series.key[:200], len(record))
        return held


def checkpoint_writes(proc: PartitionProcessor, deleted: list[str], dirty: np.ndarray,
                      replay: dict) -> Iterator[tuple[str, bytes | None]]:
    """The deletions, the written series, each evaluator's own writes, the alert book when it
    changed, then the partition's record, last."""
    p = proc.partition
    for key in deleted:
        yield key, None
    for owner in dirty.tolist():
        yield proc.series_records.records.pop(owner)
    writes: list[tuple[str, bytes | None]] = []
    for evaluator in proc.evaluators:
        writes.extend(evaluator.writes(p))
    if proc.alerting.dirty:
        writes.append((state_keys.book_key(p), held_json(proc.alerting.book.to_state())))
        proc.alerting.dirty = False
    writes.extend((key, None) for key in proc.alerting.settled(replay["applied_offset"], replay["repartition_offset"]))
    partition_state = {
        "v": STATE_VERSION,
        **replay,
        "control_offset": proc.control_offset,
        "audit_offset": proc.audit_offset,
        "seen_commands": proc.seen_commands,
        "newest_event_ts": finite_or_none(proc.newest_event_ts),
        "idle_clocks": proc.slos.idle_state(),
    }
    writes.append((state_keys.partition_key(p), held_json(partition_state)))
    yield from writes


def restore(proc: PartitionProcessor, items, now: float) -> None:
    """Fill a new processor from persisted (key, value) pairs of its partition. A record that cannot
    be read (bytes that do not parse, a version this one does not know, values out of range) is
    logged and counted (``unreadable_state``), and what it held starts afresh: a series, an SLO's
    tracker, a model, the alert book or the partition's offsets. The worker stays up."""
    partition = proc.partition
    restored = _Restored()
    for key, value in items:
        try:
            parsed = None if value is None else state_keys.parse_key(partition, key)  # None: deleted
        except Exception as exc:  # a key that is not even text of this layout
            _unreadable(proc, key, exc)
            continue
        if parsed is None:
            continue
        try:
            restored.take(proc, key, value, *parsed, now)
        except Exception as exc:
            _unreadable(proc, key, exc)
    restored_slos: set[str] = set()
    for name, header in restored.tracker_headers.items():
        with _guard(proc, f"SLO {name}"):
            restored_slos |= proc.slos.restore({name: header}, {name: restored.tracker_slots.get(name, [])})
    reports = {}
    for owner, raw in restored.model_reports.items():
        with _guard(proc, f"threshold model report {owner}"):
            proc.thresholds.restore_parts({}, {owner: raw})
            reports[owner] = raw
    proc.thresholds.restore_parts(restored.model_chunks, reports)
    restored_models: set[str] = set()
    for name, raw in restored.slo_models.items():
        with _guard(proc, f"SLO model {name}"):
            restored_models |= proc.slo_thresholds.restore({name: raw})
    for series_key, record in restored.records.items():
        _restore_series(proc, series_key, record, restored, now)
    stale_trackers = {name: restored.tracker_slots.get(name, [])
                      for name in restored.tracker_headers.keys() - restored_slos}
    _retire_stale(proc, stale_trackers, restored.slo_models.keys() - restored_models)


class _Restored:
    """What a restore has read, by kind, before it builds series and evaluators from it."""

    def __init__(self):
        self.partition_clock: list = [None, None]
        self.records: dict[str, bytes] = {}
        self.slots: dict[str, list] = {}
        self.tracker_headers: dict[str, dict] = {}
        self.tracker_slots: dict[str, list] = {}
        self.model_chunks: dict[tuple[str, str], dict[int, bytes]] = {}
        self.model_reports: dict[tuple[str, str], bytes] = {}
        self.slo_models: dict[str, bytes] = {}

    def take(self, proc: PartitionProcessor, key: str, value: bytes, kind: str, fields: list[str], now: float) -> None:
        config = proc.config
        if kind == state_keys.PARTITION:
            self._partition(proc, orjson.loads(value), now)
        elif kind == state_keys.SERIES:
            self.records[fields[0]] = value
        elif kind == state_keys.OLD_SERIES_SLOT:
            level, slot, series_key = fields
            self.slots.setdefault(series_key, []).append((int(level), int(slot), orjson.loads(value)))
            proc._deleted_keys.append(key)
        elif kind == state_keys.SLO_HEADER:
            self.tracker_headers[fields[0]] = orjson.loads(value)
        elif kind == state_keys.SLO_SLOT:
            windows_kind, level, slot, name = fields
            self.tracker_slots.setdefault(name, []).append((windows_kind, int(level), int(slot), orjson.loads(value)))
        elif kind == state_keys.MODEL_CHUNK:
            policy, first, series_key = fields
            self.model_chunks.setdefault((series_key, policy), {})[int(first)] = value
        elif kind == state_keys.MODEL_REPORT:
            self.model_reports[fields[1], fields[0]] = value
        elif kind == state_keys.SLO_MODEL:
            self.slo_models[fields[0]] = value
        elif kind == state_keys.SENT_ALERT:
            proc.alerting.sent[fields[0]] = SentAlert.decode(value)
        elif kind == state_keys.BOOK:
            proc.alerting.book = AlertBook.from_state(orjson.loads(value), config.alert_cooldown_s,
                                                      config.escalate_after_s)

    def _partition(self, proc: PartitionProcessor, saved: dict, now: float) -> None:
        """The partition's record, read whole before any of it is applied."""
        config = proc.config
        applied_offset = int(saved["applied_offset"])
        repartition_offset = int(saved.get("repartition_offset", -1))  # before the repartition topic: none
        control_offset = int(saved.get("control_offset", -1))
        audit_offset = int(saved.get("audit_offset", -1))
        seen_commands = saved.get("seen_commands", {})
        if not isinstance(seen_commands, dict):
            raise ValueError("seen_commands is not an object")
        forward_marks = {int(p): int(o) for p, o in saved.get("forward_marks", {}).items()}
        alignment = Alignment.from_state(config.partitions, saved.get("alignment"), now)
        read_through = _clock(saved.get("read_through"))
        if saved.get("v") == 1:  # one clock for the whole partition: every series starts from it
            old = saved["watermark"]
            clock = [_clock(old["max_event_ts"]), _clock(old["value"])]
            newest = clock[0]
        else:
            clock, newest = self.partition_clock, _clock(saved["newest_event_ts"])
        idle = proc.slos.idle_clocks
        proc.slos.restore_idle(saved.get("idle_clocks", []), now)
        for clocks in proc.slos.idle_clocks.values():
            if not all(map(_plausible_clock, (clocks.max_ts, clocks.watermark))):
                proc.slos.idle_clocks = idle
                raise ValueError(f"idle clock out of range: {clocks.max_ts!r}, {clocks.watermark!r}")
        proc.applied_offset, proc.repartition_offset = applied_offset, repartition_offset
        proc.control_offset, proc.audit_offset, proc.seen_commands = control_offset, audit_offset, seen_commands
        proc.intake.forward_marks = forward_marks
        proc.alignment, proc.read_through, proc.newest_event_ts = alignment, read_through, newest
        self.partition_clock = clock


def _restore_series(proc: PartitionProcessor, series_key: str, record: bytes, restored: _Restored,
                    now: float) -> None:
    """One series from its record; a record that cannot be read leaves the series to start afresh
    (what it built so far let go, its key deleted at the next checkpoint)."""
    config = proc.config
    series = None
    try:
        header, sections, windows_state = _read_series_record(record)
        service, metric, labels = header["service"], header["metric"], header["labels"]
        if not (isinstance(service, str) and isinstance(metric, str) and isinstance(labels, dict)):
            raise ValueError("service, metric or labels of the wrong type")
        lengths = proc.window_lengths(service, metric)
        if isinstance(windows_state, bytes):
            windows = TumblingWindows.from_state(windows_state, lengths, proc.store)
        elif "resolutions" in windows_state:
            ring = SeriesWindows.from_states(windows_state, restored.slots.get(series_key, []))
            windows = TumblingWindows.from_ring(ring, lengths, proc.store)
        else:
            windows = TumblingWindows.from_state(windows_state, lengths, proc.store)
        if set(labels) == set(config.label_keys):
            label_values = tuple(labels[k] for k in config.label_keys)
            ident = (service, metric, label_values) if config.label_keys else (service, metric)
        else:  # kept under other label_keys: held apart (never merged), and dropped by _retire_stale
            ident = (OTHER_LABEL_KEYS, series_key)
        if ident in proc.series:
            raise ValueError("a second record of the same series")
        series = Series(ident, series_key, service, metric, labels, windows)
        if not isinstance(windows_state, bytes):  # version 4 and before: the clock and reads are the header's
            max_ts, watermark = header.get("clock", restored.partition_clock)
            series.max_ts, series.watermark = from_finite(max_ts), from_finite(watermark)
            proc.store.put_reads(windows.owner, header.get("reads", []), from_finite(header.get("aligned_ts")))
        store, owner = proc.store, windows.owner
        clocks = (store.max_ts[owner], store.watermark[owner], store.closed_until[owner], *store.open_ends(owner))
        if not all(_plausible_clock(float(clock)) for clock in clocks):
            raise ValueError(f"clock or window out of range: {clocks!r:.300}")
        series.last_activity = now
        series.last_report = None if header["last_report"] is None else held_json(header["last_report"])
        proc.hold(series)
        if "watches" in header:  # version 5 and before
            PolicyEvaluator.restore_watches(series, header["watches"])
        keepers = {k.kind: k for k in proc.series_keepers}
        for kind, saved in sections.items():
            if kind in keepers:
                keepers[kind].restore_series(series, saved)
    except Exception as exc:
        _unreadable(proc, state_keys.series_key(proc.partition, series_key), exc)
        if series is not None and proc.series.get(series.ident) is series:
            proc.forget(series)
        else:
            proc._deleted_keys.append(state_keys.series_key(proc.partition, series_key))
        for owner in set(proc.store.owners().tolist()) - set(proc._series_of_owner):  # made before it failed
            proc.store.discard(owner)


def _retire_stale(proc: PartitionProcessor, stale_trackers: dict[str, list], stale_models: set[str]) -> None:
    """What the configuration no longer has, out of a restored processor: the series kept under
    other ``label_keys`` (evicted, their alerts resolved), the alerts of SLOs and policies no longer
    configured (resolved and forgotten), and the state keys of the SLO trackers and models not
    restored (removed, or counted under another rule: tombstones). What this emits goes out at the
    next tick (``pending``)."""
    p, config, out = proc.partition, proc.config, proc.pending
    proc.alerting.offset = proc.applied_offset
    other = [series for ident, series in proc.series.items() if ident[0] is OTHER_LABEL_KEYS]
    proc.evict(other, out)
    out.dropped_label_keys += len(other)
    stale = proc.alerting.unconfigured({slo.name for slo in config.slos},
                                       {policy.name for policy in (*config.policies, *config.models)})
    proc.alerting.retire(proc.newest_event_ts, stale, out)
    for name, slots in stale_trackers.items():
        proc._deleted_keys.append(state_keys.slo_header_key(p, name))
        proc._deleted_keys.extend(state_keys.slo_slot_key(p, kind, level, slot, name) for kind, level, slot, _ in slots)
    proc._deleted_keys.extend(state_keys.slo_model_key(p, name) for name in stale_models)
    proc.thresholds.forget_unclaimed()


def _plausible_clock(x: float) -> bool:
    """A persisted event time: unset (-inf), or finite and within Unix seconds' plausible range."""
    return x == -np.inf or (math.isfinite(x) and abs(x) < MAX_PLAUSIBLE_TS)


def _clock(x) -> float:
    """A persisted clock (null: unset), refused when out of range."""
    value = from_finite(x if x is None else float(x))
    if not _plausible_clock(value):
        raise ValueError(f"clock out of range: {x!r}")
    return value


def _unreadable(proc: PartitionProcessor, key: str, exc: Exception) -> None:
    proc.unreadable_state += 1
    log.error("partition %d: state record %.200r cannot be read, what it held starts afresh: %.500s",
              proc.partition, key, f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _guard(proc: PartitionProcessor, what: str):
    try:
        yield
    except Exception as exc:
        _unreadable(proc, what, exc)


def series_record(proc: PartitionProcessor, series: Series, windows: bytes | None = None) -> bytes:
    """A series' persisted record; ``windows``: its windows' state, if encoded already."""
    sections = [(k.kind, k.series_state(series)) for k in proc.series_keepers]
    if windows is None:
        windows = series.windows.to_state()
    header = orjson.dumps({"service": series.service, "metric": series.metric, "labels": series.labels,
                           "last_report": None if series.last_report is None else orjson.Fragment(series.last_report)})
    parts = [_RECORD_VERSION, len(header).to_bytes(4, "little"), header]
    kept = [(kind, saved) for kind, saved in sections if saved is not None]
    parts.append(bytes((len(kept),)))
    for kind, saved in kept:
        parts += (bytes((len(kind),)), kind.encode(), len(saved).to_bytes(4, "little"), saved)
    parts.append(windows)
    return b"".join(parts)


def _read_series_record(record: bytes) -> tuple[dict, dict[str, bytes], bytes | dict]:
    """A series' header, its evaluators' sections by kind, and its windows' state (bytes; a dict from
    version 4 and before)."""
    if record[:1] == b"{":
        header = orjson.loads(record)
        return header, {}, header["windows"]
    if record[0] not in (5, STATE_VERSION):
        raise ValueError(f"unsupported series state version {record[0]}")
    size = int.from_bytes(record[1:5], "little")
    header, at = orjson.loads(record[5:5 + size]), 5 + size
    if record[0] == 5:
        return header, {}, record[at:]
    sections = {}
    count, at = record[at], at + 1
    for _ in range(count):
        name_size = record[at]
        kind = record[at + 1:at + 1 + name_size].decode()
        at += 1 + name_size
        saved_size = int.from_bytes(record[at:at + 4], "little")
        sections[kind] = record[at + 4:at + 4 + saved_size]
        at += 4 + saved_size
    return header, sections, record[at:]


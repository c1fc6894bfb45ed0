"""Decoding and validation of measurement records into columns.

A Kafka record holds one measurement object or a JSON array of them. The fast
path decodes and type-checks a whole record in C with msgspec; a record it
refuses goes through the slow path, which finds the exact reason for each bad
element so that one bad element rejects only itself. Value checks (finite
numbers, timestamps) run vectorised over all elements of a batch.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import operator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson


class Reason(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE_VALUE = "non_finite_value"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LARGE = "too_large"
    OUT_OF_RANGE = "out_of_range"  # a finite value whose sums over a window could overflow
    TOO_LATE = "too_late"
    BAD_COMMAND = "bad_command"  # a control-topic command that cannot be applied
    UNDECODABLE_BATCH = "undecodable_batch"  # a fetched batch that is corrupt or uses an unknown codec
    # a forward naming a source position the source partition does not hold yet (forged)
    FORWARD_BEYOND_SOURCE = "forward_beyond_source"
    INTERNAL_ERROR = "internal_error"  # processing the record raised (a bug): dead-lettered, not a stop


AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]

_EMPTY_ARRAY = "empty array: a record must hold at least one measurement"

# Unix seconds above this are almost surely milliseconds (year 5138).
MAX_PLAUSIBLE_TS = 1e11
# A value beyond this is refused (out_of_range): sums of 10^200 of them, and of their squares,
# stay finite, so no window's sum, mean or rate can overflow to inf (and reach JSON as null).
MAX_ABS_VALUE = 1e100
DEFAULT_MAX_NAME_BYTES = 256
DEFAULT_MAX_LABELS = 32


@functools.cache
def measurement_type(max_name_bytes: int, max_labels: int) -> type[msgspec.Struct]:
    """The measurement struct whose names (service, metric, id, label keys and values) msgspec
    checks to be at most ``max_name_bytes`` characters, and its labels at most ``max_labels``,
    while it decodes (in C). A character is one to four UTF-8 bytes: names that are not plain
    ASCII get the exact byte check afterwards (``_oversized_names``)."""
    name = Annotated[str, msgspec.Meta(min_length=1, max_length=max_name_bytes)]
    text = Annotated[str, msgspec.Meta(max_length=max_name_bytes)]
    labels = Annotated[dict[text, text], msgspec.Meta(max_length=max_labels)]
    return msgspec.defstruct("Measurement", [
        ("service", name), ("metric", name), ("value", float | None, None), ("ok", bool | None, None),
        ("ts", float | AwareDatetime | None, None), ("labels", labels | None, None), ("id", text | None, None),
        ("outcome", Literal[0, 1] | None, None),
    ], gc=False, omit_defaults=True, module=__name__)


Measurement = measurement_type(DEFAULT_MAX_NAME_BYTES, DEFAULT_MAX_LABELS)
# Records this small on average are decoded in one call (the per-call cost dominates them); larger
# ones one by one (joining them would copy and scan every byte once more for little gain).
AT_ONCE_MAX_MEAN_BYTES = 1024
_TS, _VALUE, _OK = (operator.attrgetter(name) for name in ("ts", "value", "ok"))


@dataclass(frozen=True, slots=True)
class Rejection:
    record: int  # index of the record in the decoded batch
    index: int | None  # element index inside a JSON array, None for a whole record
    reason: Reason
    message: str
    element: Any = None


@dataclass
class Columns:
    """Accepted measurements of a batch, one entry per measurement."""

    measurements: list[Measurement] = field(default_factory=list)
    record: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    oks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    position: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # -1: not in an array

    def __len__(self) -> int:
        return len(self.measurements)

    def select(self, keep: np.ndarray) -> Columns:
        idx = np.flatnonzero(keep)
        return Columns(
            [self.measurements[i] for i in idx.tolist()],
            self.record[idx],
            self.ts[idx],
            self.values[idx],
            self.oks[idx],
            self.position[idx],
        )


@dataclass
class DecodedBatch:
    columns: Columns
    rejections: list[Rejection]


class MeasurementDecoder:
    """Turns raw record values into validated columns plus rejections.

    >>> d = MeasurementDecoder()
    >>> batch = d.decode([b'[{"service":"a","metric":"m","value":1}, 5]'], [100.0], now=100.0)
    >>> len(batch.columns), batch.rejections[0].reason.value, batch.columns.ts.tolist()
    (1, 'not_an_object', [100.0])
    """

    def __init__(self, max_record_bytes: int = 1 << 20, max_future_skew_s: float = 300.0,
                 max_name_bytes: int = DEFAULT_MAX_NAME_BYTES, max_labels: int = DEFAULT_MAX_LABELS):
        self.max_record_bytes = max_record_bytes
        self.max_future_skew_s = max_future_skew_s
        self.max_name_bytes = max_name_bytes
        self.measurement = measurement_type(max_name_bytes, max_labels)
        self.fast = _fast_decoder(self.measurement)

    def decode(self, values: list[bytes | None], timestamps: list[float], now: float) -> DecodedBatch:
        """Record ``values`` and their record ``timestamps`` (Unix seconds), read at wall time ``now``:
        a ``ts`` more than ``max_future_skew_s`` after it is a bad timestamp, whatever the record's
        timestamp says (a producer stamps both)."""
        at_once = self._decode_at_once(values)
        if at_once is None:
            elements, owners, positions, rejections = self._decode_each(values)
            plain = False
        else:
            elements, owners, positions, plain = at_once
            rejections = []
        columns = self._columns(timestamps, elements, owners)
        columns.position = positions
        keep = self._check_values(columns, rejections, now, {} if plain else self._oversized_names(values, columns))
        if not keep.all():
            columns = columns.select(keep)
        return DecodedBatch(columns, rejections)

    def _oversized_names(self, values: list[bytes | None], columns: Columns) -> dict[int, tuple[Reason, str]]:
        """The elements with a name longer than ``max_name_bytes`` in UTF-8, or not UTF-8 at all (a
        lone surrogate escape), and why. msgspec counted characters: only records with non-ASCII
        text (raw, or escaped) can hold a name of fewer characters but more bytes."""
        suspect = np.fromiter((raw is not None and not _plain_ascii(raw) for raw in values), dtype=bool,
                              count=len(values))
        if not suspect.any():
            return {}
        problems = {}
        for i in np.flatnonzero(suspect[columns.record]).tolist():
            problem = _name_problem(columns.measurements[i], self.max_name_bytes)
            if problem is not None:
                problems[i] = problem
        return problems

    def _decode_at_once(self, values: list[bytes | None]):
        """Every record in one msgspec call, a line each, and whether all their text is plain ASCII;
        None when any record needs a closer look (then each is decoded alone, and a refused one gets
        its exact reason)."""
        if not values or None in values:
            return None
        sizes = list(map(len, values))
        if min(sizes) == 0 or max(sizes) > self.max_record_bytes or sum(sizes) > AT_ONCE_MAX_MEAN_BYTES * len(sizes):
            return None
        joined = b"\n".join(values)
        if joined.count(b"\n") != len(values) - 1:  # a record spans lines
            return None
        try:
            decoded = self.fast.decode_lines(joined)
        except Exception:
            return None
        n = len(values)
        if len(decoded) != n:  # a blank record
            return None
        if list not in map(type, decoded):  # one lone object per record
            return decoded, np.arange(n, dtype=np.int64), np.full(n, -1, dtype=np.int64), _plain_ascii(joined)
        elements: list[Measurement] = []
        segments: list[tuple[int, int, int]] = []
        for number, item in enumerate(decoded):
            if type(item) is list:
                if not item:  # an empty array is rejected with its reason
                    return None
                elements.extend(item)
                segments.append((number, len(item), 0))
            else:
                elements.append(item)
                segments.append((number, 1, -1))
        return (elements, *_owners_and_positions(segments), _plain_ascii(joined))

    def _decode_each(self, values: list[bytes | None]):
        elements: list[Measurement] = []
        # One segment per run of elements: (record number, element count, index of the first in its
        # array or -1 for a lone object); owners and positions are then built in numpy.
        segments: list[tuple[int, int, int]] = []
        rejections: list[Rejection] = []
        for number, raw in enumerate(values):
            if raw is None or len(raw) == 0:
                rejections.append(Rejection(number, None, Reason.INVALID_JSON, "empty record"))
                continue
            if len(raw) > self.max_record_bytes:
                rejections.append(
                    Rejection(
                        number,
                        None,
                        Reason.TOO_LARGE,
                        f"record is {len(raw)} bytes, limit is {self.max_record_bytes}",
                    )
                )
                continue
            try:
                decoded = self.fast.decode(raw)
            except Exception:  # anything the fast path refuses gets an exact reason below
                self._slow_path(number, raw, elements, segments, rejections)
                continue
            if type(decoded) is list:
                if not decoded:
                    rejections.append(Rejection(number, None, Reason.MISSING_FIELD, _EMPTY_ARRAY))
                    continue
                elements.extend(decoded)
                segments.append((number, len(decoded), 0))
            else:
                elements.append(decoded)
                segments.append((number, 1, -1))
        return (elements, *_owners_and_positions(segments), rejections)

    def _slow_path(self, number, raw, elements, segments, rejections) -> None:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # Python's json also accepts NaN, Infinity and 1e400, which deserve
            # the precise non_finite_value reason rather than invalid_json.
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                rejections.append(
                    Rejection(number, None, Reason.INVALID_JSON, f"not valid UTF-8 JSON: {_short(exc)}")
                )
                return
        if isinstance(parsed, list):
            if not parsed:
                rejections.append(Rejection(number, None, Reason.MISSING_FIELD, _EMPTY_ARRAY))
                return
            items = list(enumerate(parsed))
        else:
            items = [(None, parsed)]
        for position, item in items:
            outcome = _validate_structure(item, self.measurement)
            if not isinstance(outcome, tuple):
                elements.append(outcome)
                segments.append((number, 1, -1 if position is None else position))
            else:
                reason, message = outcome
                rejections.append(Rejection(number, position, reason, message, item))

    @staticmethod
    def _columns(timestamps: list[float], elements: list[Measurement], owner: np.ndarray) -> Columns:
        record_ts = np.asarray(timestamps, dtype=np.float64)
        ts_raw = list(map(_TS, elements))
        try:
            ts = np.asarray(ts_raw, dtype=np.float64)
        except TypeError:
            ts = np.asarray([_to_seconds(t) for t in ts_raw], dtype=np.float64)
        missing_ts = np.isnan(ts)
        if missing_ts.any():
            ts[missing_ts] = record_ts[owner[missing_ts]]
        values = np.asarray(list(map(_VALUE, elements)), dtype=np.float64)
        ok_float = np.asarray(list(map(_OK, elements)), dtype=np.float64)
        oks = np.where(np.isnan(ok_float), -1, ok_float).astype(np.int8)
        return Columns(elements, owner, ts, values, oks)

    def _check_values(self, columns: Columns, rejections: list[Rejection], now: float,
                      named: dict[int, tuple[Reason, str]]) -> np.ndarray:
        """Rejects what the structure allows but the values do not (``now``: the reader's wall
        time); ``named``: the elements already refused for their names, and why."""
        values, ts = columns.values, columns.ts
        missing = np.isnan(values)
        explicit_nan = np.zeros(len(values), dtype=bool)
        if missing.any():
            # NaN from the fast decoder means "absent"; from json it means NaN.
            present = np.asarray([m.value is not None for m in columns.measurements], dtype=bool)
            explicit_nan = missing & present
        non_finite = (~missing & ~np.isfinite(values)) | explicit_nan
        with np.errstate(invalid="ignore"):
            out_of_range = np.abs(values) > MAX_ABS_VALUE
        absent = missing & ~explicit_nan & (columns.oks < 0)
        implausible = ~np.isfinite(ts) | (ts <= 0) | (ts >= MAX_PLAUSIBLE_TS)
        future = ts > now + self.max_future_skew_s
        bad = non_finite | out_of_range | absent | implausible | future
        if named:
            bad[list(named)] = True
        if not bad.any():
            return ~bad
        for i in np.flatnonzero(bad).tolist():
            m = columns.measurements[i]
            if i in named:
                reason, message = named[i]
            elif non_finite[i]:
                reason, message = Reason.NON_FINITE_VALUE, f"value {m.value!r} is not a finite number"
            elif out_of_range[i]:
                reason = Reason.OUT_OF_RANGE
                message = f"value {m.value!r} is beyond ±{MAX_ABS_VALUE:g}, where window sums could overflow"
            elif absent[i]:
                reason, message = Reason.MISSING_FIELD, "a measurement needs at least one of 'value' and 'ok'"
            elif implausible[i]:
                reason = Reason.BAD_TIMESTAMP
                hint = " (milliseconds? ts is Unix seconds)" if ts[i] >= MAX_PLAUSIBLE_TS else ""
                message = f"ts {m.ts!r} is not a plausible Unix time in seconds{hint}"
            else:
                reason = Reason.BAD_TIMESTAMP
                message = f"ts {ts[i]:.3f} is more than {self.max_future_skew_s:g}s after the wall clock ({now:.3f})"
            element = msgspec.to_builtins(m)
            position = int(columns.position[i])
            rejections.append(Rejection(int(columns.record[i]), None if position < 0 else position, reason, message,
                                        element))
        return ~bad


def _owners_and_positions(segments: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per element: its record number, and its index in the record's array (-1: a lone object)."""
    if not segments:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    numbers, counts, firsts = np.asarray(segments, dtype=np.int64).T
    owners = np.repeat(numbers, counts)
    begins = np.cumsum(counts) - counts
    within = np.arange(owners.size) - np.repeat(begins, counts)
    return owners, np.repeat(firsts, counts) + within


def _fast_decoder(measurement: type) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(list[measurement] | measurement)


def _plain_ascii(raw: bytes) -> bool:
    """Whether every string JSON ``raw`` holds is plain ASCII (one byte per character): no byte
    above 127 and no escape (a one-byte search runs at memchr speed, a two-byte one at a tenth)."""
    return raw.isascii() and b"\\" not in raw


def _name_problem(m, max_name_bytes: int) -> tuple[Reason, str] | None:
    """Why a decoded measurement's names are refused: longer than ``max_name_bytes`` in UTF-8, or
    not UTF-8 (Python's json reads a lone surrogate escape)."""
    names = [("service", m.service), ("metric", m.metric), ("id", m.id)]
    for key, value in (m.labels or {}).items():
        names += (("a label key", key), (f"label {key[:64]!r}", value))
    for what, text in names:
        if text is None:
            continue
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            return Reason.INVALID_JSON, f"{what} holds a lone UTF-16 surrogate escape, which is not valid UTF-8"
        if size > max_name_bytes:
            return Reason.TOO_LARGE, f"{what} is {size} bytes in UTF-8, the limit is {max_name_bytes} (max_name_bytes)"
    return None


def _validate_structure(item: Any, measurement: type) -> Any:
    """The measurement ``item`` makes, or why it is refused (a reason and a message)."""
    if not isinstance(item, dict):
        return Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(item).__name__}"
    for name in ("service", "metric"):
        if name not in item or item[name] is None:
            return Reason.MISSING_FIELD, f"field '{name}' is required"
    if "value" not in item and "ok" not in item:
        return Reason.MISSING_FIELD, "a measurement needs at least one of 'value' and 'ok'"
    try:
        return msgspec.convert(item, measurement)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "length <=" in text:  # a name over max_name_bytes characters, or over max_labels labels
            return Reason.TOO_LARGE, f"a name over max_name_bytes or labels over max_labels: {_short(text)}"
        if "$.ts" in text:
            return Reason.BAD_TIMESTAMP, f"ts must be Unix seconds or an RFC 3339 time with offset: {text}"
        return Reason.WRONG_TYPE, text


def _to_seconds(ts: float | dt.datetime | None) -> float:
    if ts is None:
        return float("nan")
    if isinstance(ts, dt.datetime):
        return ts.timestamp()
    return float(ts)


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"

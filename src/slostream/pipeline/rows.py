"""The measurements of one batch, ready for windowing: columns in record order, whether they were
decoded from JSON here or received as columns from another partition (``ownership.Forwarded``)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np

from slostream.core.measurement import Columns
from slostream.pipeline.ownership import Forwarded

_OUTCOME = operator.attrgetter("outcome")
# A replay mark is (offset of the record in this partition, element index) as one number.
ELEMENTS_PER_RECORD = 1 << 24
# The source of measurements windowed where they were read (forwarded ones: their source partition).
DIRECT = -1


@dataclass
class Rows:
    ts: np.ndarray
    values: np.ndarray  # NaN: no value
    oks: np.ndarray  # 1, 0, -1: no ok
    outcomes: np.ndarray  # 1, 0, -1: no outcome
    record: np.ndarray  # index of the record in the batch
    position: np.ndarray  # index in the record's array, -1 when the record held one object
    marks: np.ndarray  # replay marks: record offset * ELEMENTS_PER_RECORD + index
    sources: np.ndarray  # DIRECT or the partition it was forwarded from
    ids: np.ndarray  # dense series number
    keys: list[tuple]  # series key of each number
    elements: list[Callable[[int], dict]]  # per part: the measurement as JSON-able dict, for dead letters
    part: np.ndarray  # which part each row came from, and its index there
    local: np.ndarray

    def __len__(self) -> int:
        return self.ts.size

    def element(self, i: int) -> dict:
        return self.elements[int(self.part[i])](int(self.local[i]))


def outcome_column(measurements: list) -> np.ndarray:
    """Each measurement's outcome, -1 where it has none (outcomes are rare: read once a batch)."""
    outcomes = list(map(_OUTCOME, measurements))
    if outcomes.count(None) == len(outcomes):
        return np.full(len(outcomes), -1, dtype=np.int8)
    return np.array([-1 if o is None else o for o in outcomes], dtype=np.int8)


def from_columns(cols: Columns, sources: np.ndarray, ids: np.ndarray, keys: list[tuple],
                 record_offsets: np.ndarray) -> Rows:
    marks = record_offsets[cols.record] * ELEMENTS_PER_RECORD + np.maximum(cols.position, 0)
    measurements = cols.measurements
    return Rows(cols.ts, cols.values, cols.oks, outcome_column(measurements), cols.record, cols.position, marks,
                sources, ids, keys, [lambda i: msgspec.to_builtins(measurements[i])],
                np.zeros(len(cols), dtype=np.int64), np.arange(len(cols)))


def from_forwarded(forwarded: Forwarded, columns: dict[str, np.ndarray], keep: np.ndarray, record: int,
                   record_offset: int, source: int, label_keys: tuple[str, ...]) -> Rows:
    """The measurements ``keep`` selects of a forwarded record."""
    idx = np.flatnonzero(keep)
    keys = [(service, metric, tuple(values)) if label_keys else (service, metric)
            for service, metric, values in forwarded.keys]
    series = columns["series"][idx]
    used, ids = np.unique(series, return_inverse=True)

    def element(i: int) -> dict:
        j = int(idx[i])
        service, metric, values = forwarded.keys[int(columns["series"][j])]
        value, ok, outcome = float(columns["value"][j]), int(columns["ok"][j]), int(columns["outcome"][j])
        found = {"service": service, "metric": metric, "ts": float(columns["ts"][j])}
        if label_keys:
            found["labels"] = dict(zip(label_keys, values))
        if not np.isnan(value):
            found["value"] = value
        if ok >= 0:
            found["ok"] = bool(ok)
        if outcome >= 0:
            found["outcome"] = outcome
        if forwarded.ids is not None and forwarded.ids[j] is not None:
            found["id"] = forwarded.ids[j]
        return found

    return Rows(columns["ts"][idx], columns["value"][idx], columns["ok"][idx], columns["outcome"][idx],
                np.full(idx.size, record),
                idx.astype(np.int64), record_offset * ELEMENTS_PER_RECORD + idx, np.full(idx.size, source),
                ids.reshape(-1), [keys[i] for i in used.tolist()], [element], np.zeros(idx.size, dtype=np.int64),
                np.arange(idx.size))


def merge(parts: list[Rows]) -> Rows:
    """One set of rows in record order (each part's rows keep their order), series renumbered."""
    if len(parts) == 1:
        return parts[0]
    numbering: dict[tuple, int] = {}
    ids = []
    for part in parts:
        lookup = np.fromiter((numbering.setdefault(key, len(numbering)) for key in part.keys), dtype=np.int64,
                             count=len(part.keys))
        ids.append(lookup[part.ids])
    record = np.concatenate([p.record for p in parts])
    order = np.argsort(record, kind="stable")

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])[order]

    part = np.concatenate([np.full(len(p), n) for n, p in enumerate(parts)])[order]
    return Rows(joined("ts"), joined("values"), joined("oks"), joined("outcomes"), record[order], joined("position"),
                joined("marks"), joined("sources"), np.concatenate(ids)[order], list(numbering),
                [e for p in parts for e in p.elements], part, joined("local"))

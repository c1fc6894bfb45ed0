"""Closes aligned with every partition's read position (progress records).

A series read from several partitions (unkeyed producers spread it over all of them) must not close
a window while a share of it still sits unread in another partition's log. So every partition tells
every partition, through the measurement topic, how far it has read:

- ``read_until``: a wall time such that every record appended to its log before it has been read
  and forwarded (it was at the end of its log then), or None while it has never been;
- ``clock``: the newest event time it has read from its own log.

A progress record goes to each owner behind the forwards made before it (one producer, in order per
partition), so when an owner reads "partition P read everything up to wall time w", it already holds
P's share of whatever P's producers had written by then. An owner notes, per series, the wall time
it read each batch of it and the series' newest event time then. Data read at wall time r is
*aligned* once every partition has reported ``read_until >= r``; only then may the series' watermark
follow it. While a partition is behind (catching up, or a worker not started yet), its share of a
series is assumed near its clock, so the series may close up to the slowest such clock (less the
grace). Before every partition has reported once, nothing closes (a cold start waits for the slowest
partition to be read, not a guessed time). Like Flink's watermark alignment, this costs close
latency (a report and a fetch: the worker reports every tick, and at once when a partition reaches
the end of its log) and small records from every partition to every partition, not exactness; a topic of one partition needs none of it.
"""

from __future__ import annotations

import math

import msgspec

from slostream.pipeline.ownership import decode_versioned

PROGRESS_HEADER = "slostream-progress-from"
FORMAT_VERSION = 1
# Reads are noted on a grid of this many seconds (rounded up, so never early): a series then keeps a
# few notes until alignment, however many batches carry it.
READ_GRID_S = 0.25


class Progress(msgspec.Struct, frozen=True):
    read_until: float | None
    clock: float | None
    v: int = FORMAT_VERSION


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Progress)


def encode_progress(read_until: float | None, clock: float | None) -> bytes:
    return _ENCODER.encode(Progress(read_until, clock))


def decode_progress(value: bytes | None) -> Progress:
    """Raises ValueError when the record is not progress this version of slostream can read."""
    return decode_versioned(_DECODER, value, "progress", FORMAT_VERSION)


def progress_header(partition: int) -> tuple[str, bytes]:
    return PROGRESS_HEADER, str(partition).encode()


def note_time(now: float) -> float:
    """The grid time a read at ``now`` is noted under (never before it)."""
    return math.ceil(now / READ_GRID_S) * READ_GRID_S


class Alignment:
    """What each partition of the topic has reported of its reading, as one owner has read it."""

    __slots__ = ("partitions", "read_until", "clocks")

    def __init__(self, partitions: int):
        self.partitions = partitions
        self.read_until: dict[int, float] = {}  # partition -> wall time it had read everything before
        self.clocks: dict[int, float] = {}  # partition -> newest event time read from its log

    def report(self, source: int, progress: Progress) -> bool:
        """Take one progress record; True when the aligned time moved."""
        before = self.aligned_until
        if progress.read_until is not None:
            self.read_until[source] = max(self.read_until.get(source, -math.inf), progress.read_until)
        if progress.clock is not None:
            self.clocks[source] = max(self.clocks.get(source, -math.inf), progress.clock)
        return self.aligned_until > before

    @property
    def aligned_until(self) -> float:
        """Every partition has read everything written before this wall time."""
        if self.partitions == 1:
            return math.inf
        if len(self.read_until) < self.partitions:
            return -math.inf
        return min(self.read_until.values())

    def behind_clock(self, now: float) -> float:
        """The slowest clock of the partitions not yet read up to ``now`` (-inf for one never heard
        from, inf when none is behind): a series read at ``now`` may close up to it."""
        if self.partitions == 1:
            return math.inf
        return min((self.clocks.get(p, -math.inf) for p in range(self.partitions)
                    if self.read_until.get(p, -math.inf) < now), default=math.inf)

    def to_state(self) -> dict:
        return {"read_until": {str(p): t for p, t in self.read_until.items()},
                "clocks": {str(p): t for p, t in self.clocks.items()}}

    @classmethod
    def from_state(cls, partitions: int, state: dict | None) -> "Alignment":
        alignment = cls(partitions)
        for p, t in (state or {}).get("read_until", {}).items():
            alignment.read_until[int(p)] = t
        for p, t in (state or {}).get("clocks", {}).items():
            alignment.clocks[int(p)] = t
        return alignment

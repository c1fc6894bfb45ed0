"""Closes aligned with every partition's read position (progress records).

A series read from several partitions (unkeyed producers spread it over all of them) must not close
a window while a share of it still sits unread in another partition's log. So every partition tells
every partition, through the repartition topic (``ownership``), how far it has read:
``read_until``, a time such that every record *written* to its log before it has been read and
forwarded, or None while it cannot say yet. It knows that two ways:

- it was at the end of its log: every record appended before the fetch that showed that end was
  sent has been read (``io.end_offsets``);
- record timestamps: it has read a record written at t (its Kafka timestamp, the producer's
  CreateTime or the broker's LogAppendTime), so it has read everything written before t. This is
  what lets windows close while partitions catch up on a backlog at different speeds.

A progress record goes to each owner behind the forwards made before it (one producer, in order per
partition), so when an owner reads "partition P read everything written before t", it already holds
P's share of it. An owner notes, per series, when the data it holds of the series was written and
the series' newest event time then. Data written at w is *aligned* once every partition has reported
``read_until >= w``; only then may the series' watermark follow it. Before every partition has
reported once, nothing closes (a cold start waits for the slowest partition).

Assumption: the clocks that stamp records (producers', or the broker's with LogAppendTime) agree
within ``READ_SLACK_S``; a record is counted as written no later than when it was read. Like Flink's
watermark alignment, this costs close latency (a report and a fetch: the worker reports every tick,
and at once when a partition reaches the end of its log) and small records from every partition to
every partition, not exactness; a topic of one partition needs none of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from slostream.pipeline.ownership import decode_versioned

PROGRESS_HEADER = "slostream-progress-from"
FORMAT_VERSION = 1
# Reads are noted on a grid of this many seconds (rounded up, so never early): a series then keeps a
# few notes until alignment, however many batches carry it.
READ_GRID_S = 0.25


# A partition claims a little less than it has read: clocks stamping records differ a little, and a
# producer's records for different partitions reach the broker a moment apart.
READ_SLACK_S = 0.25


class Progress(msgspec.Struct, frozen=True):
    read_until: float | None
    v: int = FORMAT_VERSION


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Progress)


def encode_progress(read_until: float | None) -> bytes:
    return _ENCODER.encode(Progress(read_until))


def decode_progress(value: bytes | None) -> Progress:
    """Raises ValueError when the record is not progress this version of slostream can read."""
    return decode_versioned(_DECODER, value, "progress", FORMAT_VERSION)


def progress_header(partition: int) -> tuple[str, bytes]:
    return PROGRESS_HEADER, str(partition).encode()


def written_by(timestamp: float, read_at: float) -> float:
    """When a record stamped ``timestamp`` was written, at the latest: a clock running ahead is
    trusted no further than the time the record was read."""
    return min(timestamp, read_at)


def read_until_claim(end_known_at: float | None, read_through: float) -> float | None:
    """What a partition claims to have read: everything written before the later of the time its
    end was last known (None: it has not been at its end) and the newest record time it has read."""
    through = max(-math.inf if end_known_at is None else end_known_at, read_through)
    return None if through == -math.inf else through - READ_SLACK_S


def note_time(now: float) -> float:
    """The grid time a read at ``now`` is noted under (never before it)."""
    return math.ceil(now / READ_GRID_S) * READ_GRID_S


# A partition not heard of for this long (wall time: no progress record, whatever it said; since its
# owner took the partition, if never) is *stalled*: a reader that hangs while its group membership
# lives on. A reader that is alive reports every tick, even while it re-reads what it had read (a
# replay after a restart) or is held by its read-ahead limit. A stalled partition holds no other
# back from reading (``read_ahead_limits``). Closes wait for it until another partition has been
# heard of all along for this long (``Alignment.stalled``): what it reads later is late, as Kafka
# Streams processes without a partition that has idled past ``max.task.idle.ms``. Another's reports
# count from the start of their current run (no gap over ``RUN_GAP_S``): a broker outage silences
# every partition at once, and after it their first reports come one by one, so none is left
# behind. A new owner that takes longer than this to restore a partition's state makes it stalled.
STALLED_AFTER_S = 600.0
RUN_GAP_S = 60.0


def read_ahead_limits(claims: Mapping[int, float | None], partitions: int, budget: float,
                      stalled: frozenset[int] = frozenset()) -> dict[int, float]:
    """How far (record time) each partition of the topic may be read: at most ``budget`` past what
    every partition has read (``claims``: each one's ``read_until``, as best known here; missing or
    None, nothing known yet), so that no series holds open data further ahead of its aligned time
    than an SLO's base ring can (an owner holds a series' watermark back to what every partition
    has read: the data it holds open costs memory, not counts).
    Workers read at their own speeds; this is what holds a fast one back (as Flink's watermark
    alignment does). A partition with the least claim is never held, whatever its next
    record's time (a gap in its log): the aligned time moves only with it. Until every partition has
    claimed a position, only those that have not are read. A ``stalled`` partition holds nobody back."""
    if partitions == 1:
        return dict.fromkeys(range(partitions), math.inf)
    known = {p: -math.inf if claims.get(p) is None else claims[p] for p in range(partitions) if p not in stalled}
    aligned = min(known.values(), default=math.inf)
    limits = {p: math.inf if claim <= aligned else aligned + budget for p, claim in known.items()}
    return {**limits, **dict.fromkeys(stalled, math.inf)}


class Alignment:
    """What each partition of the topic has reported of its reading, as one owner has read it since
    wall time ``since``."""

    __slots__ = ("partitions", "read_until", "heard_at", "run_since", "since")

    def __init__(self, partitions: int, since: float):
        self.partitions = partitions
        self.since = since
        self.read_until: dict[int, float] = {}  # partition -> it has read everything written before
        self.heard_at: dict[int, float] = {}  # partition -> wall time of its last progress record here
        self.run_since: dict[int, float] = {}  # partition -> wall time its current run of reports began

    def report(self, source: int, progress: Progress, now: float) -> None:
        """Take one progress record, read at wall time ``now``."""
        if progress.read_until is not None and progress.read_until > self.read_until.get(source, -math.inf):
            self.read_until[source] = progress.read_until
        if now - self.heard_at.get(source, -math.inf) > RUN_GAP_S:
            self.run_since[source] = now
        self.heard_at[source] = now

    def last_heard(self, source: int) -> float:
        """When ``source`` last reported here (wall time; ``since``, if not since then)."""
        return self.heard_at.get(source, self.since)

    def stalled(self) -> frozenset[int]:
        """The partitions not heard of for ``STALLED_AFTER_S`` while another was heard of all along."""
        last = [self.last_heard(p) for p in range(self.partitions)]
        if max(self.heard_at.values(), default=-math.inf) - min(last) < STALLED_AFTER_S:
            return frozenset()  # the usual case, in one pass: it is asked for at every batch
        running = [(self.run_since[q], self.heard_at[q]) for q in self.heard_at]
        return frozenset(p for p in range(self.partitions)
                         if any(heard - max(self.last_heard(p), since) >= STALLED_AFTER_S for since, heard in running))

    @property
    def aligned_until(self) -> float:
        """Every partition not ``stalled`` has read everything written before this time."""
        if self.partitions == 1:
            return math.inf
        waited = set(range(self.partitions)) - self.stalled()
        return min((self.read_until.get(p, -math.inf) for p in waited), default=math.inf)

    def to_state(self) -> dict:
        return {"read_until": {str(p): t for p, t in self.read_until.items()}}

    @classmethod
    def from_state(cls, partitions: int, state: dict | None, since: float) -> Alignment:
        alignment = cls(partitions, since)
        for p, t in (state or {}).get("read_until", {}).items():
            alignment.read_until[int(p)] = t
        return alignment

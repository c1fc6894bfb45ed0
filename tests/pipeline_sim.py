"""A partitioned measurement topic over the pure pipeline: one processor per partition, each
partition's logs in-memory lists (append, read by offset): the measurement log producers write, and
the repartition log that forwarded and progress records are appended to, as the broker would. Every
few reads each partition ticks and reports how far it has read, as a worker does every
``tick_interval_s``."""

import itertools
import math
import random

import orjson

from slostream.config import Settings, pipeline_config
from slostream.core.control import ControlAuth, ControlLimits
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import Output, PipelineConfig, SourceRecord

START = 1_800_010_000.0  # wall time at the start: late enough that no measurement is "in the future"
# The wall clock of pure runs that count time from zero: later than every measurement of the tests'
# data (a ts ahead of the wall clock is a bad timestamp), so ``WALL + s`` is s seconds into a run.
WALL = 2_000_000_000.0


def make_config(**settings) -> PipelineConfig:
    """The pipeline configuration of these settings over the defaults, for the scenario the pipeline
    tests share unless they say otherwise: one partition, series idle after 5 s."""
    return pipeline_config(Settings(**{"partitions": 1, "idle_after_s": 5.0, **settings}))


class Cluster:
    """One processor per partition; each partition's log is a list of records, read in chunks."""

    def __init__(self, config: PipelineConfig, rng: random.Random, tick_every: int = 10):
        self.config = config
        self.rng = rng
        self.tick_every = tick_every  # rounds of reads between ticks
        self.logs: list[list[SourceRecord]] = [[] for _ in range(config.partitions)]
        self.read = [0] * config.partitions
        self.repartition_logs: list[list[SourceRecord]] = [[] for _ in range(config.partitions)]
        self.repartition_read = [0] * config.partitions
        self.end_known_at: list[float | None] = [None] * config.partitions  # wall time each was at its log's end
        self.paused: set[int] = set()  # partitions nobody reads (a worker not started yet)
        self.clock = START  # wall time: each read of a chunk takes 10 ms
        self.procs = [PartitionProcessor(p, config, now=START) for p in range(config.partitions)]
        self.sli: list[dict] = []
        self.deadletter: list[dict] = []
        self.alerts: list[dict] = []

    def append(self, partition: int, value: bytes, key: bytes | None = None, headers=()) -> None:
        """A producer's record (with any headers it likes), stamped as written."""
        log = self.logs[partition]
        log.append(SourceRecord("m", partition, len(log), self.clock, key, value, tuple(headers)))

    def step(self, partition: int, max_records: int, read_ahead: float = math.inf) -> bool:
        """Read the next chunk of one partition's measurement log (no record written after
        ``read_ahead``), then of its repartition log; its forwards are appended to the owners'
        repartition logs."""
        start = self.read[partition]
        chunk = self.logs[partition][start:start + max_records]
        chunk = list(itertools.takewhile(lambda record: record.timestamp <= read_ahead, chunk))
        proc = self.procs[partition]
        if chunk:
            self.read[partition] += len(chunk)
            self.clock += 0.01
            self.collect(proc.process(chunk, self.clock))
            for out in proc.align_parts():  # as a worker does after each slice
                self.collect(out)
        if self.read[partition] == len(self.logs[partition]):
            self.end_known_at[partition] = self.clock  # later appends come at this clock or after
        start = self.repartition_read[partition]
        received = self.repartition_logs[partition][start:start + max_records]
        if received:
            self.repartition_read[partition] += len(received)
            self.clock += 0.01
            self.collect(proc.receive(received, self.clock, {p: len(log) for p, log in enumerate(self.logs)}))
            for out in proc.align_parts():
                self.collect(out)
        return bool(chunk or received)

    def tick(self) -> None:
        """Every read partition reports its progress (behind its forwards) and ticks."""
        for partition, proc in enumerate(self.procs):
            if partition not in self.paused:
                self.collect(proc.progress(self.end_known_at[partition]))
                self.collect(proc.tick(self.clock))

    def collect(self, out) -> None:
        self.sli += [e for _, e in out.sli]
        self.deadletter += [e for _, e in out.deadletter]
        self.alerts += [e for _, e in out.alerts]
        for forward in out.forwards:
            log = self.repartition_logs[forward.partition]
            log.append(SourceRecord("repartition", forward.partition, len(log), self.clock, None, forward.value,
                                    tuple(forward.headers)))

    def drain(self, produced: list[tuple[int, bytes, bytes | None]] = ()) -> None:
        """Produce ``produced`` (partition, value, key) a few records at a time while the partitions
        are read in turn, each in random chunk sizes, until all are read: live producers, and
        consumers of different partitions about as fast as each other."""
        pending = list(produced)
        rounds = 0
        while pending or any(self.unread(p) for p in self.active()):
            count = self.rng.randint(1, 12)
            for partition, value, key in pending[:count]:
                self.append(partition, value, key)
            del pending[:count]
            for partition in self.active():
                self.step(partition, self.rng.randint(1, 7))
            rounds += 1
            if rounds % self.tick_every == 0:
                self.tick()

    def unread(self, partition: int) -> bool:
        return (self.read[partition] < len(self.logs[partition])
                or self.repartition_read[partition] < len(self.repartition_logs[partition]))

    def active(self) -> list[int]:
        return [p for p in range(len(self.logs)) if p not in self.paused]

    def settle(self) -> None:
        """Let wall time pass (quiet series run on); every partition reports and ticks, twice: the
        second time the owners have read the first reports."""
        self.clock += self.config.idle_after_s + 1
        for _ in range(2):
            self.drain()
            self.tick()
        self.drain()

    def windows(self) -> dict:
        """(service, window start) -> count of the SLI events; fails on two payloads under one id or
        two events for one window."""
        by_id: dict[str, dict] = {}
        for event in self.sli:
            assert by_id.setdefault(event["id"], event) == event, "two payloads under one event id"
        counts: dict = {}
        for event in by_id.values():
            key = (event["data"]["service"], event["data"]["window_start"])
            assert key not in counts, f"two SLI events for one window {key}"
            counts[key] = event["data"]["count"]
        return counts




class ControlTopics:
    """The control topic and the audit topic as lists: a judge (the processor of partition 0)
    judges each command once and appends its audit event; ``apply`` hands the audit log to
    processors as a worker does (each skips what it applied already)."""

    def __init__(self, auth: ControlAuth | None = None, limits: ControlLimits | None = None):
        self.auth = auth or ControlAuth()
        self.limits = limits or ControlLimits()
        self.control: list[SourceRecord] = []
        self.audit: list[SourceRecord] = []

    def send(self, judge: PartitionProcessor, value: bytes, now: float) -> dict:
        """Append a command to the control topic; the judge judges it at ``now``: its audit event."""
        record = SourceRecord("control", 0, len(self.control), now, None, value)
        self.control.append(record)
        key, event = judge.judge_control(record, now, self.auth, self.limits)
        self.audit.append(SourceRecord("audit", 0, len(self.audit), now, key, orjson.dumps(event)))
        return event

    def apply(self, *procs: PartitionProcessor) -> Output:
        out = Output()
        for proc in procs:
            for record in self.audit:
                for part in proc.apply_control(record):
                    out.extend(part)
        return out

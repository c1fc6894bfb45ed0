"""The alert lifecycle of a partition: every evaluator's alert conditions go through one
``AlertBook`` (dedup, inhibition, silences, acknowledgements, escalation, cooldown) and come out as
``slostream.alert.*`` events; operators' commands act on the same book.

An alert event's id names its base buckets, but where in a bucket an SLO is judged depends on how
the log was cut into batches. So every event is logged to the state (``Output.alert_log``, made
durable before the event is sent) until a checkpoint's replay offset passes it. A replay after a
crash that judges the same transition again sends the logged event, byte for byte, and the episode
keeps the times it named: events sharing an id are identical."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from slostream.core.alerts import AlertBook, AlertEvent, Condition
from slostream.core.buckets import bucket_start
from slostream.core.control import Command
from slostream.pipeline.envelopes import alert_envelope
from slostream.pipeline.state_keys import sent_alert_key
from slostream.pipeline.types import Output, PipelineConfig

SENT_VERSION = 1


class SentAlert(NamedTuple):
    # The newest offsets of the partition's measurement and repartition logs judged when it was sent:
    # a replay from beyond both never repeats it.
    offset: int
    repartition_offset: int
    starts_at: float
    ends_at: float | None
    key: bytes
    event: dict

    def encode(self) -> bytes:
        return orjson.dumps({"v": SENT_VERSION, "offset": self.offset, "repartition_offset": self.repartition_offset,
                             "starts_at": self.starts_at, "ends_at": self.ends_at, "key": self.key.decode(),
                             "event": self.event})

    @classmethod
    def decode(cls, raw: bytes) -> SentAlert:
        saved = orjson.loads(raw)
        if saved.get("v") != SENT_VERSION:
            raise ValueError(f"unsupported sent alert version {saved.get('v')!r}")
        return cls(saved["offset"], saved.get("repartition_offset", -1), saved["starts_at"], saved["ends_at"],
                   saved["key"].encode(), saved["event"])


class Alerting:
    __slots__ = ("book", "dirty", "width", "source", "partition", "sent", "offset", "repartition_offset", "now")

    def __init__(self, config: PipelineConfig, partition: int):
        self.book = AlertBook(config.alert_cooldown_s, config.escalate_after_s)
        self.dirty = False  # the book changed since it was last written
        self.width = config.resolutions[0].width
        self.source = config.source
        self.partition = partition
        self.sent: dict[str, SentAlert] = {}  # by event id, since the replay offset
        self.offset = -1  # the newest offsets of the measurement and repartition logs being judged
        self.repartition_offset = -1
        self.now = 0.0  # wall time of the batch or tick being judged: silences and escalation run on it

    def evaluate(self, at: float, conditions: list[Condition], out: Output) -> None:
        """Conditions judged at event time ``at`` (and wall time ``now``): the alert events they cause."""
        self.emit(self.book.evaluate(at, conditions, self.now), out)

    def command(self, now: float, command: Command, out: Output) -> None:
        """A silence, an unsilence or an acknowledgement, at event time ``now``."""
        if command.kind == "silence":
            events = self.book.silence(now, command.silence)
        elif command.kind == "unsilence":
            events = self.book.unsilence(now, command.silence_id)
        else:
            events = self.book.acknowledge_matching(now, command.fingerprint, command.matchers, command.by)
        self.emit(events, out)
        self.dirty = True

    def retire(self, at: float, keys: list[str], out: Output) -> None:
        """Alerts whose judge is gone (``AlertBook.retire``), resolved at event time ``at`` if firing."""
        if keys:
            self.emit(self.book.retire(at, keys), out)
            self.dirty = True

    def unconfigured(self, slos: set[str], policies: set[str]) -> list[str]:
        """The alerts of SLOs and policies not among those named (no longer configured)."""
        return [key for key, alert in self.book.alerts.items()
                if ("slo" in alert.labels and alert.labels["slo"] not in slos)
                or ("policy" in alert.labels and alert.labels["policy"] not in policies)]

    def emit(self, events: list[AlertEvent], out: Output) -> None:
        for alert_event in events:
            key, event = alert_envelope(alert_event, bucket_start(alert_event.alert_start, self.width),
                                        bucket_start(alert_event.time, self.width), self.source)
            sent = self.sent.get(event["id"])
            if sent is None:
                ends_at = alert_event.time if alert_event.type == "resolved" else None
                sent = self.sent[event["id"]] = SentAlert(self.offset, self.repartition_offset, alert_event.alert_start,
                                                          ends_at, key, event)
                out.alert_log.append((self.partition, sent_alert_key(self.partition, event["id"]), sent.encode()))
            else:
                self.book.keep_times(event["data"]["fingerprint"], sent.starts_at, sent.ends_at)
            out.alerts.append((sent.key, sent.event))
        if events:
            self.dirty = True

    def settled(self, replay_offset: int, replay_repartition_offset: int) -> list[str]:
        """Forget the events a replay from these offsets (of the measurement and repartition logs)
        can no longer repeat: their state keys."""
        done = [event_id for event_id, sent in self.sent.items()
                if sent.offset <= replay_offset and sent.repartition_offset <= replay_repartition_offset]
        for event_id in done:
            del self.sent[event_id]
        return [sent_alert_key(self.partition, event_id) for event_id in done]

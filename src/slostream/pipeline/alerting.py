"""The alert lifecycle of a partition: every evaluator's alert conditions go through one
``AlertBook`` (dedup, inhibition, silences, acknowledgements, escalation, cooldown) and come out as
``slostream.alert.*`` events; operators' commands act on the same book."""

from __future__ import annotations

from slostream.core.alerts import AlertBook, AlertEvent, Condition
from slostream.core.buckets import bucket_start
from slostream.core.control import Command
from slostream.pipeline.envelopes import alert_envelope
from slostream.pipeline.types import Output, PipelineConfig


class Alerting:
    __slots__ = ("book", "dirty", "width", "source")

    def __init__(self, config: PipelineConfig):
        self.book = AlertBook(config.alert_cooldown_s, config.escalate_after_s)
        self.dirty = False  # the book changed since it was last written
        self.width = config.resolutions[0].width
        self.source = config.source

    def evaluate(self, at: float, conditions: list[Condition], out: Output) -> None:
        """Conditions judged at event time ``at``: the alert events they cause."""
        self.emit(self.book.evaluate(at, conditions), out)

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

    def emit(self, events: list[AlertEvent], out: Output) -> None:
        for alert_event in events:
            out.alerts.append(alert_envelope(alert_event, bucket_start(alert_event.alert_start, self.width),
                                             bucket_start(alert_event.time, self.width), self.source))
        if events:
            self.dirty = True

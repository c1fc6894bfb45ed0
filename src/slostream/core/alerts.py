"""Alert lifecycle: fire, deduplicate, resolve, inhibit, silence, acknowledge,
escalate and cool down. Pure: time is passed in, events are returned.

Alerts follow Alertmanager's model (labels, annotations, startsAt, endsAt,
status, fingerprint). Conditions are judged at event time, which names the events; what a person
decided for a stretch of real time (a silence's end, how long a page waits for an acknowledgement
before it escalates) is judged at wall time ``wall``, passed in too: a measurement dated in the far
future or a backlog being caught up moves event time, not the operators' clock. One alert per label
set; one ``firing`` event per episode and one ``resolved`` event, so replays and restarts (with the
state restored) emit nothing twice.

>>> book = AlertBook(cooldown_s=0)
>>> page = {"alertname": "SLOBurn", "slo": "checkout", "severity": "page"}
>>> [e.type for e in book.evaluate(100.0, [Condition(page, True)])]
['firing']
>>> book.evaluate(110.0, [Condition(page, True)])
[]
>>> [e.type for e in book.evaluate(120.0, [Condition(page, False)])]
['resolved']
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from .events import rfc3339

STATE_VERSION = 1
RESOLVED_KEEP_S = 3600.0
LADDERS = (("info", "warning", "critical", "emergency"), ("ticket", "page"))
SEVERITIES = tuple(severity for ladder in LADDERS for severity in ladder)
# (source severity, target severity): a firing source silences targets with the same slo.
INHIBITIONS = (("page", "ticket"), ("emergency", "critical"), ("critical", "warning"))


def fingerprint(labels: dict[str, str]) -> str:
    """Stable hash of a label set (order-free)."""
    return _fingerprint(tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=65536)
def _fingerprint(items: tuple[tuple[str, str], ...]) -> str:
    text = "\x1f".join(f"{k}={v}" for k, v in items)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def escalated(severity: str) -> str | None:
    for ladder in LADDERS:
        if severity in ladder:
            position = ladder.index(severity)
            return ladder[position + 1] if position + 1 < len(ladder) else None
    return None


@dataclass(frozen=True)
class Condition:
    """What the evaluator wants: does the alert with these labels hold now?"""

    labels: dict[str, str]
    holds: bool
    annotations: dict[str, str] = field(default_factory=dict)
    key: str = ""  # the labels' fingerprint, when the caller has it at hand

    @property
    def fingerprint(self) -> str:
        return self.key or fingerprint(self.labels)


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: dict[str, str]
    until: float
    by: str = ""
    reason: str = ""

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.matchers.items())


@dataclass(frozen=True)
class AlertEvent:
    type: str  # firing, resolved, silenced, acknowledged
    time: float
    alert: dict  # Alertmanager's alert model
    alert_start: float = 0.0  # startsAt, as Unix seconds


@dataclass
class _Alert:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None = None
    acknowledged_by: str | None = None
    silenced_by: str | None = None
    escalated_to: str | None = None  # fingerprint of the alert this one was raised to
    fired_wall: float | None = None  # wall time the episode began firing (escalation)

    @property
    def firing(self) -> bool:
        return self.ends_at is None

    def model(self) -> dict:
        return {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at) if self.ends_at is not None else "0001-01-01T00:00:00Z",
            "status": "firing" if self.firing else "resolved",
            "fingerprint": fingerprint(self.labels),
        }


class AlertBook:
    """Every alert of a worker's SLOs and policies, plus silences."""

    def __init__(self, cooldown_s: float = 300.0, escalate_after_s: float | None = None):
        self.cooldown_s = cooldown_s
        self.escalate_after_s = escalate_after_s
        self.alerts: dict[str, _Alert] = {}
        self.silences: dict[str, Silence] = {}

    # --- evaluation -------------------------------------------------------

    def evaluate(self, now: float, conditions: list[Condition], wall: float | None = None) -> list[AlertEvent]:
        """Conditions judged at event time ``now``, at wall time ``wall`` (None: the same)."""
        wall = now if wall is None else wall
        events: list[AlertEvent] = []
        for silence_id in [s.id for s in self.silences.values() if s.until <= wall]:
            del self.silences[silence_id]
        # Resolved alerts are kept only as long as the cooldown needs them.
        forget = now - max(self.cooldown_s, RESOLVED_KEEP_S)
        for key in [k for k, a in self.alerts.items()
                    if a.ends_at is not None and a.ends_at < forget and self._raised(a) is None]:
            del self.alerts[key]
        holding = {c.fingerprint: c for c in conditions if c.holds}
        for condition in conditions:
            key = condition.fingerprint
            holds = key in holding and not self._inhibited(condition.labels, holding)
            alert = self.alerts.get(key)
            raised = self._raised(alert)
            if raised is not None:  # escalated: the raised alert lives and ends with this condition
                if holds:
                    raised.annotations = {**condition.annotations, "escalated_from": raised.labels["escalated_from"]}
                else:
                    events.append(self._resolve(now, raised))
                    alert.ends_at = now  # the episode ends here: the cooldown counts from now
                continue
            if holds:
                events.extend(self._hold(now, wall, key, alert, condition))
            elif alert is not None and alert.firing:
                events.append(self._resolve(now, alert))
        events.extend(self._refresh_silences(now))
        events.extend(self._escalate(now, wall))
        return events

    def _raised(self, alert: _Alert | None) -> _Alert | None:
        """The firing end of an alert's escalation chain, if it was escalated."""
        while alert is not None and alert.escalated_to is not None:
            alert = self.alerts.get(alert.escalated_to)
            if alert is not None and alert.firing:
                return alert
        return None

    def _inhibited(self, labels: dict[str, str], holding: dict[str, Condition]) -> bool:
        for source, target in INHIBITIONS:
            if labels.get("severity") != target:
                continue
            for condition in holding.values():
                if condition.labels.get("severity") == source and condition.labels.get("slo") == labels.get("slo"):
                    return True
        return False

    def _hold(self, now: float, wall: float, key: str, alert: _Alert | None,
              condition: Condition) -> list[AlertEvent]:
        if alert is not None and alert.firing:
            alert.annotations = dict(condition.annotations)
            return []
        if alert is not None and alert.ends_at is not None and now - alert.ends_at < self.cooldown_s:
            return []  # flapping: wait out the cooldown before a new episode
        alert = _Alert(dict(condition.labels), dict(condition.annotations), starts_at=now, fired_wall=wall)
        self.alerts[key] = alert
        silence = self._silence_for(alert.labels)
        if silence is not None:
            alert.silenced_by = silence.id
            return [AlertEvent("silenced", now, alert.model(), alert.starts_at)]
        return [AlertEvent("firing", now, alert.model(), alert.starts_at)]

    def _resolve(self, now: float, alert: _Alert) -> AlertEvent:
        alert.ends_at = now
        return AlertEvent("resolved", now, alert.model(), alert.starts_at)

    def _silence_for(self, labels: dict[str, str]) -> Silence | None:
        return next((s for s in self.silences.values() if s.matches(labels)), None)

    def _refresh_silences(self, now: float) -> list[AlertEvent]:
        events = []
        for alert in self.alerts.values():
            if not alert.firing:
                continue
            silence = self._silence_for(alert.labels)
            if silence is not None and alert.silenced_by is None:
                alert.silenced_by = silence.id
                events.append(AlertEvent("silenced", now, alert.model(), alert.starts_at))
            elif silence is None and alert.silenced_by is not None:
                alert.silenced_by = None  # silence over, still firing: tell on-call now
                events.append(AlertEvent("firing", now, alert.model(), alert.starts_at))
        return events

    def _escalate(self, now: float, wall: float) -> list[AlertEvent]:
        if self.escalate_after_s is None:
            return []
        events = []
        for alert in list(self.alerts.values()):
            if not alert.firing or alert.acknowledged_by or alert.silenced_by:
                continue
            higher = escalated(alert.labels.get("severity", ""))
            if alert.fired_wall is None:  # restored from a state written before wall times were kept
                alert.fired_wall = wall
            if higher is None or wall - alert.fired_wall < self.escalate_after_s:
                continue
            events.append(self._resolve(now, alert))
            # Its own label, so the raised alert never collides with that severity's own condition.
            labels = {**alert.labels, "severity": higher, "escalated_from": alert.labels["severity"]}
            raised = _Alert(labels, {**alert.annotations, "escalated_from": alert.labels["severity"]}, now,
                            fired_wall=wall)
            alert.escalated_to = fingerprint(labels)
            self.alerts[alert.escalated_to] = raised
            events.append(AlertEvent("firing", now, raised.model(), raised.starts_at))
        return events

    def retire(self, now: float, keys: list[str]) -> list[AlertEvent]:
        """Forget the alerts of ``keys`` for good (what judged them is gone: an SLO or a policy no
        longer configured, an evicted series), each firing one, or the alert it was escalated to,
        resolved first."""
        events = []
        for key in keys:
            alert = self.alerts.pop(key, None)
            while alert is not None:
                if alert.firing:
                    events.append(self._resolve(max(now, alert.starts_at), alert))
                alert = None if alert.escalated_to is None else self.alerts.pop(alert.escalated_to, None)
        return events

    def keep_times(self, key: str, starts_at: float, ends_at: float | None) -> None:
        """An episode judged again (a replay after a crash) keeps the times its sent event named,
        so what follows names them too."""
        alert = self.alerts.get(key)
        if alert is not None:
            alert.starts_at = starts_at
            if ends_at is not None and alert.ends_at is not None:
                alert.ends_at = ends_at

    # --- operator commands ------------------------------------------------

    def silence(self, now: float, silence: Silence) -> list[AlertEvent]:
        self.silences[silence.id] = silence
        return self._refresh_silences(now)

    def unsilence(self, now: float, silence_id: str) -> list[AlertEvent]:
        self.silences.pop(silence_id, None)
        return self._refresh_silences(now)

    def acknowledge_matching(self, now: float, key: str | None, matchers: dict[str, str] | None,
                             by: str) -> list[AlertEvent]:
        """Acknowledge one alert by fingerprint, or every firing alert the matchers select."""
        if key is not None:
            return self.acknowledge(now, key, by)
        probe = Silence("", matchers or {}, 0.0)
        events = []
        for fp in [fp for fp, a in self.alerts.items() if a.firing and probe.matches(a.labels)]:
            events.extend(self.acknowledge(now, fp, by))
        return events

    def firing(self) -> list[dict]:
        """Every alert firing now (silenced ones included, marked), as Alertmanager models."""
        out = []
        for alert in self.alerts.values():
            if alert.firing:
                model = alert.model()
                model["silencedBy"] = [alert.silenced_by] if alert.silenced_by else []
                model["acknowledgedBy"] = alert.acknowledged_by
                out.append(model)
        return out

    def acknowledge(self, now: float, key: str, by: str) -> list[AlertEvent]:
        alert = self.alerts.get(key)
        if alert is None or not alert.firing or alert.acknowledged_by:
            return []
        alert.acknowledged_by = by
        alert.annotations = {**alert.annotations, "acknowledged_by": by}
        return [AlertEvent("acknowledged", now, alert.model(), alert.starts_at)]

    # --- state ------------------------------------------------------------

    def to_state(self) -> dict:
        return {
            "v": STATE_VERSION,
            "cooldown_s": self.cooldown_s,
            "escalate_after_s": self.escalate_after_s,
            "alerts": {k: vars(a).copy() for k, a in self.alerts.items()},
            "silences": {k: vars(s).copy() for k, s in self.silences.items()},
        }

    @classmethod
    def from_state(cls, state: dict, cooldown_s: float | None = None,
                   escalate_after_s: float | None = None) -> AlertBook:
        """Restore; the given settings (today's configuration) win over the stored ones."""
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported alert state version {state.get('v')!r}")
        book = cls(state["cooldown_s"] if cooldown_s is None else cooldown_s,
                   state["escalate_after_s"] if escalate_after_s is None else escalate_after_s)
        book.alerts = {k: _Alert(**a) for k, a in state["alerts"].items()}
        book.silences = {k: Silence(**s) for k, s in state["silences"].items()}
        return book

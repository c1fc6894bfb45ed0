"""Operator commands from the control topic: silence, unsilence, ack, recommend; and the log of those
still in force.

>>> cmd = parse_command(b'{"command": "silence", "matchers": {"slo": "checkout"}, "for": "2h", "by": "ana"}',
...                     offset=7, record_time=1000.0)
>>> (cmd.kind, cmd.silence.until, cmd.silence.id)
('silence', 8200.0, 'control-7')
>>> parse_command(b'{"command": "ack"}', offset=8, record_time=0.0)
CommandError('ack needs a fingerprint (from the alert event) or matchers')
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .alerts import Silence
from .durations import parse_duration

COMMANDS = ("silence", "unsilence", "ack", "recommend")


@dataclass(frozen=True)
class Command:
    kind: str
    time: float
    by: str
    silence: Silence | None = None
    silence_id: str | None = None
    fingerprint: str | None = None
    matchers: dict[str, str] | None = None
    policy: str | None = None
    slo: str | None = None


@dataclass(frozen=True)
class CommandError:
    message: str

    def __repr__(self) -> str:
        return f"CommandError({self.message!r})"


def parse_command(raw: bytes | None, offset: int, record_time: float) -> Command | CommandError:
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        return CommandError(f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return CommandError(f"a command is a JSON object, got {type(doc).__name__}")
    kind = doc.get("command")
    if kind not in COMMANDS:
        return CommandError(f"'command' is {kind!r}; use one of {', '.join(COMMANDS)}")
    by = doc.get("by", "")
    if not isinstance(by, str):
        return CommandError("'by' must be a string (who sent the command)")
    matchers = doc.get("matchers")
    if matchers is not None and (not isinstance(matchers, dict) or not matchers or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in matchers.items())):
        return CommandError("'matchers' must be a non-empty object of label: value strings")
    if kind == "silence":
        if matchers is None:
            return CommandError("silence needs 'matchers' (labels the silenced alerts must carry)")
        until = _until(doc, record_time)
        if isinstance(until, CommandError):
            return until
        reason = doc.get("reason", "")
        silence_id = doc.get("id", f"control-{offset}")
        if not isinstance(silence_id, str) or not silence_id or not isinstance(reason, str):
            return CommandError("'id' and 'reason' must be strings")
        return Command(kind, record_time, by, silence=Silence(silence_id, matchers, until, by, reason))
    if kind == "unsilence":
        silence_id = doc.get("id")
        if not isinstance(silence_id, str) or not silence_id:
            return CommandError("unsilence needs the silence's 'id'")
        return Command(kind, record_time, by, silence_id=silence_id)
    if kind == "recommend":
        policy, slo = doc.get("policy"), doc.get("slo")
        if (policy is None) == (slo is None) or not isinstance(policy or slo, str) or not (policy or slo):
            return CommandError("recommend needs either the 'policy' whose levels or the 'slo' whose threshold to "
                                "recommend")
        return Command(kind, record_time, by, policy=policy, slo=slo)
    fingerprint = doc.get("fingerprint")
    if fingerprint is None and matchers is None:
        return CommandError("ack needs a fingerprint (from the alert event) or matchers")
    if fingerprint is not None and not isinstance(fingerprint, str):
        return CommandError("'fingerprint' must be a string")
    if not by:
        return CommandError("ack needs 'by' (who takes the alert)")
    return Command(kind, record_time, by, fingerprint=fingerprint, matchers=matchers)


def _until(doc: dict, record_time: float) -> float | CommandError:
    if "until" in doc and "for" in doc:
        return CommandError("give either 'until' or 'for', not both")
    if "for" in doc:
        seconds = parse_duration(str(doc["for"]))
        if seconds is None:
            return CommandError(f"'for' is {doc['for']!r}; use a duration like 30m, 2h, 1d or 1w")
        return record_time + seconds
    until = doc.get("until")
    if isinstance(until, (int, float)) and not isinstance(until, bool):
        return float(until)
    if isinstance(until, str):
        try:
            parsed = dt.datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    return CommandError(f"'until' is {until!r}; use RFC 3339 with a zone (2026-11-22T18:00:00Z), "
                        "Unix seconds, or give 'for' instead")


# A command stays in the log at least this long (wall seconds): a partition restored shortly after
# still gets it, whatever became of it meanwhile.
CONTROL_MIN_AGE_S = 3600.0


class ControlLog:
    """The control commands a partition restored later must still apply, in topic order: not every
    command since the start of the topic, only those in force.

    After ``CONTROL_MIN_AGE_S`` a command is dropped once it no longer changes what a restored
    partition would hold: a silence when it has expired (by its ``until``, with the same margin, so
    a partition whose event time lags still has it) or a later unsilence lifted it; an unsilence
    (what it lifted is as old, and gone); an ack when no alert it selects is firing; a malformed
    command (its dead letter was sent when it was read); a recommend (its events were sent).

    >>> log = ControlLog()
    >>> log.append("r1", parse_command(b'{"command": "silence", "matchers": {"slo": "a"}, "for": "1h"}', 1, 0.0), 0.0)
    >>> log.append("r2", parse_command(b'{"command": "unsilence", "id": "control-1"}', 2, 10.0), 10.0)
    >>> log.prune(10.0 + CONTROL_MIN_AGE_S, firing=lambda command: False)
    >>> list(log)
    []
    """

    def __init__(self) -> None:
        self._items: list[tuple[Any, Command | CommandError, float]] = []  # (record, command, wall time read)

    def append(self, record: Any, command: Command | CommandError, read_at: float) -> None:
        self._items.append((record, command, read_at))

    def __iter__(self):
        return ((record, command) for record, command, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def prune(self, now: float, firing: Callable[[Command], bool]) -> None:
        """Drop what is no longer in force at wall time ``now``; ``firing(ack)``: whether an alert
        the ack selects fires."""
        last_unsilence = {c.silence_id: i for i, (_, c, _) in enumerate(self._items)
                          if isinstance(c, Command) and c.kind == "unsilence"}
        self._items = [(record, command, read_at) for i, (record, command, read_at) in enumerate(self._items)
                       if now - read_at < CONTROL_MIN_AGE_S or _in_force(command, i, now, last_unsilence, firing)]


def _in_force(command: Command | CommandError, index: int, now: float, last_unsilence: dict[str, int],
              firing: Callable[[Command], bool]) -> bool:
    if isinstance(command, CommandError) or command.kind in ("unsilence", "recommend"):
        return False
    if command.kind == "silence":
        lifted = last_unsilence.get(command.silence.id, -1) > index
        return not lifted and command.silence.until + CONTROL_MIN_AGE_S > now
    return firing(command)

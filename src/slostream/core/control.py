"""Operator commands from the control topic (silence, unsilence, ack, recommend): reading one
without ever raising, its Ed25519 signature, and the judgement that applies or refuses it with a
reason. Every judgement is written once to the audit topic; every partition applies what the
audit topic says was applied (``pipeline.partition``), so a command is judged once, against the
wall clock of the moment it was read, and never again.

>>> cmd = parse_command(b'{"command": "silence", "matchers": {"slo": "checkout"}, "for": "2h", "by": "ana"}',
...                     offset=7, now=1000.0)
>>> (cmd.kind, cmd.silence.until, cmd.silence.id)
('silence', 8200.0, 'control-7')
>>> parse_command(b'{"command": "ack"}', offset=8, now=0.0)
CommandError('malformed', 'ack needs a fingerprint (from the alert event) or matchers')
>>> parse_command(b'{"command": "silence", "matchers": {"slo": "a"}, "for": "' + b'9' * 400 + b'w"}', 9, 0.0).message
"'for' is '99999999999999999999999999999999999999999999999999999999999999...; use a duration like 30m, 2h, 1d or 1w"
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .alerts import Silence
from .durations import parse_duration

COMMANDS = ("silence", "unsilence", "ack", "recommend")
# A signed command is refused when its issued_at is further than this from the wall clock.
MAX_CLOCK_SKEW_S = 300.0
# Command ids are remembered this long after they were issued: any older command is expired anyway.
SEEN_IDS_S = 2 * MAX_CLOCK_SKEW_S
# The longest string field read (ids, names, reasons): a command is a small thing.
MAX_FIELD_CHARS = 1024
SIGNED_FIELDS = ("id", "issued_at", "key_id", "sig")


class Refusal(StrEnum):
    """Why a command was refused (the audit event's ``reason``)."""

    MALFORMED = "malformed"  # not JSON, not an object, or a field missing or of the wrong kind
    TOO_LARGE = "too_large"  # the record is longer than max_deadletter_bytes
    UNSIGNED = "unsigned"  # keys are configured and the command has no key_id or sig
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    FORBIDDEN = "forbidden"  # the key may not send this command
    EXPIRED = "expired"  # issued_at more than MAX_CLOCK_SKEW_S off the wall clock
    REPLAYED = "replayed"  # a command with this id was seen already
    TOO_LONG = "too_long"  # a silence lasting more than max_silence_s
    TOO_MANY_SILENCES = "too_many_silences"  # max_silences are active already
    INTERNAL_ERROR = "internal_error"  # judging it raised (a bug it reaches): refused, not a stop


# Refusals decided before the signature was known good: their ids prove nothing, so they are not
# remembered (a forged command cannot burn the id of a genuine one). A judgement that raised proved nothing.
UNPROVEN = frozenset({Refusal.MALFORMED, Refusal.TOO_LARGE, Refusal.UNSIGNED, Refusal.UNKNOWN_KEY,
                      Refusal.BAD_SIGNATURE, Refusal.INTERNAL_ERROR})


@dataclass(frozen=True)
class Command:
    kind: str
    time: float  # wall time it was judged at: a silence's 'for' counts from it
    by: str
    doc: dict = field(repr=False)  # the command as sent
    silence: Silence | None = None
    silence_id: str | None = None
    fingerprint: str | None = None
    matchers: dict[str, str] | None = None
    policy: str | None = None
    slo: str | None = None


@dataclass(frozen=True)
class CommandError:
    reason: Refusal
    message: str
    doc: dict | None = field(default=None, repr=False)  # the command, when it was a JSON object

    def __repr__(self) -> str:
        return f"CommandError({self.reason.value!r}, {self.message!r})"


@dataclass(frozen=True)
class ControlLimits:
    max_silence_s: float = 30 * 86400.0
    max_silences: int = 1000


@dataclass(frozen=True)
class ControlKey:
    """A key that may sign control commands: its id, raw Ed25519 public key and allowed commands."""

    key_id: str
    public_key: bytes
    commands: tuple[str, ...]


def parse_command(raw: bytes | None, offset: int, now: float) -> Command | CommandError:
    """The command in a control record read at wall time ``now``. Never raises: anything it cannot
    use is a ``CommandError`` (refused, with its reason)."""
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        return CommandError(Refusal.MALFORMED, f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return CommandError(Refusal.MALFORMED, f"a command is a JSON object, got {type(doc).__name__}")
    return read_command(doc, offset, now)


def read_command(doc: dict, offset: int, now: float) -> Command | CommandError:
    """``parse_command`` of a decoded object: what a partition applies from the audit topic, with
    ``now`` the time it was judged at (so it resolves to the same silence)."""
    problem = _field_problem(doc)
    if problem:
        return CommandError(Refusal.MALFORMED, problem, doc)
    kind, by, matchers = doc.get("command"), doc.get("by", ""), doc.get("matchers")

    def error(message: str) -> CommandError:
        return CommandError(Refusal.MALFORMED, message, doc)

    if kind == "silence":
        if matchers is None:
            return error("silence needs 'matchers' (labels the silenced alerts must carry)")
        until = _until(doc, now)
        if isinstance(until, str):
            return error(until)
        silence_id = doc.get("id", f"control-{offset}")
        return Command(kind, now, by, doc, silence=Silence(silence_id, matchers, until, by, doc.get("reason", "")))
    if kind == "unsilence":
        # An unsigned command may still name the silence by 'id', as before signatures; a signed
        # one's 'id' is its own, unique one.
        silence_id = doc.get("silence_id") or (None if "sig" in doc else doc.get("id"))
        if not silence_id:
            return error("unsilence needs 'silence_id' (the silence's id; 'id' is this command's own id)")
        return Command(kind, now, by, doc, silence_id=silence_id)
    if kind == "recommend":
        policy, slo = doc.get("policy"), doc.get("slo")
        if (policy is None) == (slo is None) or not (policy or slo):
            return error("recommend needs either the 'policy' whose levels or the 'slo' whose threshold to recommend")
        return Command(kind, now, by, doc, policy=policy, slo=slo)
    fingerprint = doc.get("fingerprint")
    if fingerprint is None and matchers is None:
        return error("ack needs a fingerprint (from the alert event) or matchers")
    if not by:
        return error("ack needs 'by' (who takes the alert)")
    return Command(kind, now, by, doc, fingerprint=fingerprint, matchers=matchers)


def _short_string(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_FIELD_CHARS


def _field_problem(doc: dict) -> str | None:
    """What is wrong with the kinds of the fields, whatever the command."""
    kind = doc.get("command")
    if kind not in COMMANDS:
        return f"'command' is {str(kind)[:64]!r}; use one of {', '.join(COMMANDS)}"
    for name in ("by", "reason", "silence_id", "fingerprint", "policy", "slo", "key_id", "sig"):
        if name in doc and not _short_string(doc[name]):
            return f"'{name}' must be a string of at most {MAX_FIELD_CHARS} characters"
    if "id" in doc and not (_short_string(doc["id"]) and doc["id"]):
        return f"'id' must be a non-empty string of at most {MAX_FIELD_CHARS} characters"
    issued_at = doc.get("issued_at")
    if "issued_at" in doc and not (_number(issued_at) and math.isfinite(issued_at)):
        return "'issued_at' must be Unix seconds (a number)"
    matchers = doc.get("matchers")
    if matchers is not None and (not isinstance(matchers, dict) or not matchers or len(matchers) > 64 or not all(
            _short_string(k) and _short_string(v) for k, v in matchers.items())):
        return "'matchers' must be a non-empty object of at most 64 label: value strings"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _until(doc: dict, now: float) -> float | str:
    """When a silence ends (finite, after ``now``), or what is wrong."""
    if "until" in doc and "for" in doc:
        return "give either 'until' or 'for', not both"
    if "for" in doc:
        text = doc["for"]
        # A count of at most 12 digits: finite, and int() never meets a number too long to read.
        seconds = parse_duration(text) if isinstance(text, str) and len(text.strip()) <= 13 else None
        if seconds is None:
            return f"'for' is {str(text)[:64]!r}; use a duration like 30m, 2h, 1d or 1w"
        return now + seconds
    until = doc.get("until")
    ends = float(until) if _number(until) and math.isfinite(until) else _rfc3339(until)
    if ends is None:
        return (f"'until' is {str(until)[:64]!r}; use RFC 3339 with a zone (2026-11-22T18:00:00Z), "
                "Unix seconds, or give 'for' instead")
    if ends <= now:
        return f"'until' ({str(until)[:64]!r}) is not in the future"
    return ends


def _rfc3339(text: Any) -> float | None:
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed.timestamp() if parsed.tzinfo is not None else None
    except (ValueError, OverflowError, OSError):
        return None


# --- signatures -------------------------------------------------------------


def signed_bytes(doc: Mapping[str, Any]) -> bytes:
    """What ``sig`` signs: the command without ``sig``, as JSON with sorted keys and no whitespace."""
    return orjson.dumps({k: v for k, v in doc.items() if k != "sig"}, option=orjson.OPT_SORT_KEYS)


def sign(doc: dict, private_key: Ed25519PrivateKey) -> dict:
    """``doc`` (with its id, issued_at and key_id) and its ``sig``."""
    return {**doc, "sig": base64.b64encode(private_key.sign(signed_bytes(doc))).decode()}


def new_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM (PKCS#8 private key, SubjectPublicKeyInfo public key): the
    forms ``openssl genpkey -algorithm ed25519`` and ``openssl pkey -pubout`` write."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def private_key_of_pem(pem: bytes) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM; ValueError when it is something else."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"a {type(key).__name__.removesuffix('PrivateKey').removeprefix('_')} key, not Ed25519")
    return key


def public_key_of_pem(pem: bytes) -> bytes:
    """The raw 32 bytes of the Ed25519 public key in PEM; ValueError when it is something else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class ControlAuth:
    """The keys that may sign commands. Without keys every command is taken unsigned."""

    def __init__(self, keys: tuple[ControlKey, ...] = ()):
        self._keys = {k.key_id: (Ed25519PublicKey.from_public_bytes(k.public_key), frozenset(k.commands))
                      for k in keys}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, doc: dict, now: float, seen: Mapping[str, float]) -> CommandError | None:
        """Why a signed command may not be applied at wall time ``now`` (None: it may)."""
        key_id, sig = doc.get("key_id"), doc.get("sig")
        if not isinstance(key_id, str) or not isinstance(sig, str):
            return CommandError(Refusal.UNSIGNED, "keys are configured: a command needs 'key_id' and 'sig'", doc)
        grant = self._keys.get(key_id)
        if grant is None:
            return CommandError(Refusal.UNKNOWN_KEY, f"no key {key_id[:64]!r} is configured (control_keys)", doc)
        public_key, commands = grant
        try:
            public_key.verify(base64.b64decode(sig, validate=True), signed_bytes(doc))
        except (InvalidSignature, binascii.Error, ValueError):
            return CommandError(Refusal.BAD_SIGNATURE, f"the signature does not match key {key_id!r}", doc)
        command_id, issued_at = doc.get("id"), doc.get("issued_at")
        if not isinstance(command_id, str) or not (_number(issued_at) and math.isfinite(issued_at)):
            return CommandError(Refusal.MALFORMED, "a signed command needs 'id' and 'issued_at'", doc)
        if doc.get("command") not in commands:
            return CommandError(Refusal.FORBIDDEN, f"key {key_id!r} may not send {str(doc.get('command'))[:64]!r} "
                                                   f"(it may send {', '.join(sorted(commands)) or 'nothing'})", doc)
        if abs(issued_at - now) > MAX_CLOCK_SKEW_S:
            return CommandError(Refusal.EXPIRED, f"issued_at {issued_at} is {issued_at - now:+.0f} s off the wall "
                                                 f"clock (at most {MAX_CLOCK_SKEW_S:g} s)", doc)
        if command_id in seen:
            return CommandError(Refusal.REPLAYED, f"a command with id {command_id!r} was seen already", doc)
        return None


def judge(parsed: Command | CommandError, now: float, auth: ControlAuth, limits: ControlLimits,
          seen: Mapping[str, float], silences: Mapping[str, Silence]) -> Command | CommandError:
    """Whether a command read at wall time ``now`` is applied (the command) or refused (why):
    ``seen``, the ids of recent commands; ``silences``, those held now."""
    if isinstance(parsed, CommandError) and parsed.doc is None:
        return parsed
    if auth.enabled:
        refused = auth.check(parsed.doc, now, seen)
        if refused is not None:
            return refused
    if isinstance(parsed, CommandError) or parsed.silence is None:
        return parsed
    silence = parsed.silence
    if silence.until - now > limits.max_silence_s:
        return CommandError(Refusal.TOO_LONG, f"the silence would last {silence.until - now:.0f} s; at most "
                                              f"{limits.max_silence_s:g} s (max_silence_s)", parsed.doc)
    active = sum(1 for s in silences.values() if s.until > now and s.id != silence.id)
    if active >= limits.max_silences:
        return CommandError(Refusal.TOO_MANY_SILENCES, f"{active} silences are active already; at most "
                                                       f"{limits.max_silences} (max_silences)", parsed.doc)
    return parsed


def remember(seen: dict[str, float], data: Mapping[str, Any], now: float) -> None:
    """Note the id of an audited command whose signature held (``seen`` for replays); forget those
    issued more than ``SEEN_IDS_S`` before ``now``."""
    command = data.get("command")
    issued_at = command.get("issued_at") if isinstance(command, dict) else None
    command_id = data.get("command_id")
    if data.get("reason") not in UNPROVEN and isinstance(command_id, str) and _number(issued_at):
        seen[command_id] = float(issued_at)
    for old in [k for k, issued in seen.items() if issued < now - SEEN_IDS_S]:
        del seen[old]


APPLIED, REFUSED = "slostream.command.applied", "slostream.command.refused"  # the audit event types


def read_audit(raw: bytes | None) -> tuple[int, float, dict, Command | None] | str:
    """An audit event as a partition applies it: the control topic's offset of its command, when
    it was judged, its data, and the command if it was applied (None: refused); or what is wrong
    with it. Never raises."""
    try:
        event = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict) or event.get("type") not in (APPLIED, REFUSED):
        return f"not an audit event (a CloudEvent of type {APPLIED} or {REFUSED})"
    offset, judged_at, doc = data.get("offset"), data.get("judged_at"), data.get("command")
    if not (isinstance(offset, int) and not isinstance(offset, bool) and _number(judged_at)
            and math.isfinite(judged_at)):
        return "an audit event needs the control topic's 'offset' and 'judged_at' (Unix seconds)"
    if event["type"] == REFUSED:
        return offset, float(judged_at), data, None
    command = read_command(doc, offset, float(judged_at)) if isinstance(doc, dict) else None
    if not isinstance(command, Command):
        return f"an applied command that cannot be read: {command}"
    return offset, float(judged_at), data, command

"""CloudEvents 1.0 structured envelopes with deterministic ids."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from typing import Any

SPEC_VERSION = "1.0"


def event_id(*parts: object) -> str:
    """Stable id from what an event describes, so consumers can dedupe replays."""
    return event_id_of_text("\x1f".join(map(str, parts)))


def event_id_of_text(text: str) -> str:
    """``event_id`` of parts already joined by ``\\x1f`` (a hot path formats them itself)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)  # every series' window ending at the same time shares it
def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def cloud_event(
    type_: str, source: str, id_: str, time_s: float, data: Any, subject: str | None = None
) -> dict:
    event = {
        "specversion": SPEC_VERSION,
        "type": type_,
        "source": source,
        "id": id_,
        "time": rfc3339(time_s),
        "datacontenttype": "application/json",
        "data": data,
    }
    if subject is not None:
        event["subject"] = subject
    return event

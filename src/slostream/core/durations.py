"""Durations as written in definitions, settings and control commands: a whole number and a unit.

>>> parse_duration("5m"), parse_duration(" 4w "), parse_duration("1M"), parse_duration("0s"), parse_duration(5)
(300, 2419200, None, None, None)
>>> split_duration("1Q")
(1, 'Q')
"""

from __future__ import annotations

import re
from typing import Any

_DURATION_RE = re.compile(r"^(\d+)([smhdwMQY])$")
# Units of a fixed length; months (M), quarters (Q) and years (Y) are calendar units.
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def split_duration(text: Any) -> tuple[int, str] | None:
    """The count (positive) and unit of a duration such as 30s, 5m, 2h, 28d, 4w, 1M, 1Q or 1Y."""
    if not isinstance(text, str):
        return None
    match = _DURATION_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        return None
    return int(match.group(1)), match.group(2)


def parse_duration(text: Any) -> int | None:
    """Seconds of a duration of fixed length (s, m, h, d or w); None for anything else."""
    parts = split_duration(text)
    if parts is None or parts[1] not in UNIT_SECONDS:
        return None
    return parts[0] * UNIT_SECONDS[parts[1]]

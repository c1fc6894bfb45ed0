"""What both definition formats produce, and what they share."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from typing import Any

from slostream.core.objectives import Policy, Slo

DEFAULT_NO_DATA = {"after": "15m", "severity": "ticket"}


@dataclass(frozen=True)
class Definitions:
    slos: tuple[Slo, ...] = ()
    policies: tuple[Policy, ...] = ()
    # ``models:``: aggregates that get a threshold model and recommended levels without a policy
    # (policies with neither level).
    models: tuple[Policy, ...] = ()


@dataclass(frozen=True)
class SloProblem:
    file: str
    document: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.document}: field '{self.field}': {self.message}"


def known_time_zone(name: Any) -> bool:
    try:
        zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True

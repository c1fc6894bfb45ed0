"""SLO definitions in slostream's own YAML: model and validation.

Every problem is reported, not only the first, each naming the file, the
document (the SLO's name, or its position) and the field, with the fix.
OpenSLO documents are not read yet (issue 3).
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

import yaml

from slostream.core.budget import BurnTier, default_tiers

DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
GOOD_THRESHOLDS = ("value_le", "value_lt", "value_ge", "value_gt")
SEVERITIES = ("page", "ticket", "info", "warning", "critical", "emergency")
CALENDARS = ("week", "month", "quarter")
SLO_FIELDS = {"name", "service", "metric", "objective", "window", "good", "budgeting", "alerting",
              "description", "runbook_url", "labels"}


@dataclass(frozen=True)
class GoodRule:
    """``ok`` (ok == true is good) or a threshold on the value."""

    kind: str
    threshold: float | None = None

    def is_good(self, value: float | None, ok: bool | None) -> bool | None:
        """Whether one measurement is good; None when it carries nothing to judge."""
        if self.kind == "ok":
            return ok
        if value is None:
            return None
        return {
            "value_le": value <= self.threshold,
            "value_lt": value < self.threshold,
            "value_ge": value >= self.threshold,
            "value_gt": value > self.threshold,
        }[self.kind]


@dataclass(frozen=True)
class SloWindow:
    rolling_s: int | None = None
    calendar: str | None = None
    timezone: str = "UTC"

    @property
    def period_s(self) -> int:
        """Length used to scale burn-rate thresholds (a calendar month counts as 30 days)."""
        if self.rolling_s is not None:
            return self.rolling_s
        return {"week": 7, "month": 30, "quarter": 91}[self.calendar] * 86400


@dataclass(frozen=True)
class Timeslices:
    slice_s: int
    good_if_ratio_ge: float


@dataclass(frozen=True)
class Slo:
    name: str
    service: str
    metric: str
    objective: float
    window: SloWindow
    good: GoodRule
    budgeting: str | Timeslices = "occurrences"
    tiers: tuple[BurnTier, ...] = ()
    min_events: int = 0
    description: str = ""
    runbook_url: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SloProblem:
    file: str
    document: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.document}: field '{self.field}': {self.message}"


def parse_duration(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    match = DURATION_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        return None
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


class _Checker:
    def __init__(self, file: str, document: str):
        self.file = file
        self.document = document
        self.problems: list[SloProblem] = []

    def fail(self, name: str, message: str) -> None:
        self.problems.append(SloProblem(self.file, self.document, name, message))

    def text(self, doc: dict, name: str, required: bool = True) -> str | None:
        value = doc.get(name)
        if value is None:
            if required:
                self.fail(name, "is required. Fix: give a non-empty string")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(name, f"is {value!r}. Fix: give a non-empty string")
            return None
        return value

    def duration(self, value: Any, name: str) -> int | None:
        seconds = parse_duration(value)
        if seconds is None:
            self.fail(name, f"is {value!r}, not a duration. Fix: write a whole number and a unit, "
                            "like 30s, 5m, 1h, 28d or 4w")
        return seconds


def _window(check: _Checker, raw: Any) -> SloWindow | None:
    if isinstance(raw, str):
        seconds = check.duration(raw, "window")
        return None if seconds is None else SloWindow(rolling_s=seconds)
    if isinstance(raw, dict):
        unknown = set(raw) - {"calendar", "timezone"}
        if unknown:
            check.fail("window", f"has unknown keys {sorted(unknown)}. Fix: use calendar and timezone")
        calendar = raw.get("calendar")
        if calendar not in CALENDARS:
            check.fail("window.calendar", f"is {calendar!r}. Fix: use one of {', '.join(CALENDARS)}")
            return None
        timezone = raw.get("timezone", "UTC")
        try:
            zoneinfo.ZoneInfo(str(timezone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            check.fail("window.timezone", f"is {timezone!r}, not a known time zone. "
                                          "Fix: use an IANA name such as Europe/Berlin or UTC")
            return None
        return SloWindow(calendar=calendar, timezone=str(timezone))
    check.fail("window", f"is {raw!r}. Fix: give a rolling duration like 30d, "
                         "or {calendar: month|week|quarter, timezone: Europe/Berlin}")
    return None


def _good(check: _Checker, raw: Any) -> GoodRule | None:
    if raw == "ok":
        return GoodRule("ok")
    if isinstance(raw, dict) and len(raw) == 1:
        (kind, threshold), = raw.items()
        if kind in GOOD_THRESHOLDS:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                check.fail(f"good.{kind}", f"is {threshold!r}. Fix: give a number")
                return None
            return GoodRule(kind, float(threshold))
    check.fail("good", f"is {raw!r}. Fix: use ok, or one of {{{': N}, {'.join(GOOD_THRESHOLDS)}: N}}")
    return None


def _budgeting(check: _Checker, raw: Any) -> str | Timeslices | None:
    if raw is None or raw == "occurrences":
        return "occurrences"
    if isinstance(raw, dict) and set(raw) == {"timeslices"} and isinstance(raw["timeslices"], dict):
        spec = raw["timeslices"]
        slice_s = check.duration(spec.get("slice"), "budgeting.timeslices.slice")
        ratio = spec.get("good_if_ratio_ge")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            check.fail("budgeting.timeslices.good_if_ratio_ge", f"is {ratio!r}. Fix: give a ratio in (0, 1]")
            return None
        return None if slice_s is None else Timeslices(slice_s, float(ratio))
    check.fail("budgeting", f"is {raw!r}. Fix: use occurrences or "
                            "{timeslices: {slice: 1m, good_if_ratio_ge: 0.95}}")
    return None


def _tiers(check: _Checker, raw: Any, period_s: int | None) -> tuple[BurnTier, ...]:
    if raw in (None, "default"):
        return default_tiers(period_s) if period_s else ()
    if not isinstance(raw, list) or not raw:
        check.fail("alerting.tiers", f"is {raw!r}. Fix: use default, or a list of "
                                     "{severity, long, short, burn_rate}")
        return ()
    tiers = []
    for i, item in enumerate(raw):
        where = f"alerting.tiers[{i}]"
        if not isinstance(item, dict):
            check.fail(where, f"is {item!r}. Fix: give {{severity, long, short, burn_rate}}")
            continue
        severity = item.get("severity")
        if severity not in SEVERITIES:
            check.fail(f"{where}.severity", f"is {severity!r}. Fix: use one of {', '.join(SEVERITIES)}")
        long_s = check.duration(item.get("long"), f"{where}.long")
        short_s = check.duration(item.get("short"), f"{where}.short")
        rate = item.get("burn_rate")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
            check.fail(f"{where}.burn_rate", f"is {rate!r}. Fix: give a positive number")
            continue
        if long_s and short_s and short_s >= long_s:
            check.fail(f"{where}.short", f"({item.get('short')}) must be shorter than long ({item.get('long')}). "
                                         "Fix: the workbook uses short = long / 12")
            continue
        if severity in SEVERITIES and long_s and short_s:
            tiers.append(BurnTier(severity, long_s, short_s, float(rate)))
    return tuple(tiers)


def parse_slo(doc: Any, file: str, position: int) -> tuple[Slo | None, list[SloProblem]]:
    name = doc.get("name") if isinstance(doc, dict) else None
    document = f"slo '{name}'" if isinstance(name, str) and name else f"slos[{position}]"
    check = _Checker(file, document)
    if not isinstance(doc, dict):
        check.fail("slos", f"entry {position} is {doc!r}. Fix: each SLO is a mapping")
        return None, check.problems
    for unknown in sorted(set(doc) - SLO_FIELDS):
        check.fail(unknown, f"is not a field of an SLO. Fix: remove it or use one of {', '.join(sorted(SLO_FIELDS))}")
    name = check.text(doc, "name")
    service = check.text(doc, "service")
    metric = check.text(doc, "metric")
    objective = doc.get("objective")
    if isinstance(objective, bool) or not isinstance(objective, (int, float)) or not 0 < objective < 1:
        check.fail("objective", f"is {objective!r}. Fix: give the target good ratio, strictly between 0 and 1 "
                                "(0.999 for 99.9%)")
        objective = None
    window = _window(check, doc.get("window"))
    good = _good(check, doc.get("good"))
    budgeting = _budgeting(check, doc.get("budgeting"))
    alerting = doc.get("alerting") or {}
    if not isinstance(alerting, dict):
        check.fail("alerting", f"is {alerting!r}. Fix: give a mapping with tiers and min_events")
        alerting = {}
    for unknown in sorted(set(alerting) - {"tiers", "min_events"}):
        check.fail(f"alerting.{unknown}", "is not a field of alerting. Fix: use tiers or min_events")
    tiers = _tiers(check, alerting.get("tiers"), window.period_s if window else None)
    min_events = alerting.get("min_events", 0)
    if isinstance(min_events, bool) or not isinstance(min_events, int) or min_events < 0:
        check.fail("alerting.min_events", f"is {min_events!r}. Fix: give a whole number of events, 0 or more")
        min_events = 0
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        check.fail("labels", f"is {labels!r}. Fix: give a flat map of strings")
        labels = {}
    if check.problems:
        return None, check.problems
    return Slo(name, service, metric, float(objective), window, good, budgeting, tiers, min_events,
               str(doc.get("description", "")), doc.get("runbook_url"), labels), []


def load_slo_file(path: str) -> tuple[list[Slo], list[SloProblem]]:
    try:
        with open(path) as handle:
            documents = list(yaml.safe_load_all(handle))
    except OSError as exc:
        return [], [SloProblem(path, "file", "-", f"cannot be read ({exc.strerror}). Fix: pass an existing file")]
    except yaml.YAMLError as exc:
        return [], [SloProblem(path, "file", "-", f"is not valid YAML ({exc}). Fix: correct the syntax shown")]
    slos: list[Slo] = []
    problems: list[SloProblem] = []
    for number, document in enumerate(d for d in documents if d is not None):
        if not isinstance(document, dict) or "slos" not in document:
            problems.append(SloProblem(path, f"document {number}", "slos",
                                       "is missing. Fix: put the definitions under a top-level 'slos:' list"))
            continue
        entries = document["slos"]
        if not isinstance(entries, list):
            problems.append(SloProblem(path, f"document {number}", "slos", "must be a list of SLOs"))
            continue
        for position, entry in enumerate(entries):
            slo, found = parse_slo(entry, path, position)
            problems.extend(found)
            if slo is not None:
                slos.append(slo)
    seen: set[str] = set()
    for slo in slos:
        if slo.name in seen:
            problems.append(SloProblem(path, f"slo '{slo.name}'", "name",
                                       "is used twice. Fix: give every SLO its own name"))
        seen.add(slo.name)
    return slos, problems

"""SLO and policy definitions in slostream's own YAML, and the loading of a definitions file
(slostream's documents and OpenSLO ones, ``definitions.openslo``).

Every problem is reported, not only the first, each naming the file, the
document (the SLO's name, or its position) and the field, with the fix.
"""

from __future__ import annotations

from typing import Any

import yaml

from slostream.core.budget import BurnTier, default_tiers
from slostream.core.durations import parse_duration
from slostream.core.objectives import AGGREGATES, GoodRule, Policy, Slo, SloWindow, Timeslices
from slostream.definitions.model import DEFAULT_NO_DATA, Definitions, SloProblem, known_time_zone
from slostream.definitions.openslo import is_openslo, parse_openslo

GOOD_THRESHOLDS = ("value_le", "value_lt", "value_ge", "value_gt")
SEVERITIES = ("page", "ticket", "info", "warning", "critical", "emergency")
CALENDARS = ("week", "month", "quarter")
SLO_FIELDS = {"name", "service", "metric", "objective", "window", "good", "budgeting", "alerting",
              "description", "runbook_url", "labels"}
POLICY_FIELDS = {"name", "service", "metric", "aggregate", "window", "direction", "warning", "critical",
                 "consecutive", "min", "max", "runbook_url"}
MODEL_FIELDS = {"name", "service", "metric", "aggregate", "window", "direction", "consecutive", "min", "max"}
MAX_POLICY_WINDOW_S = 6 * 3600  # quantile sketches are kept for 6 hours


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
        if not known_time_zone(timezone):
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
    for unknown in sorted(set(alerting) - {"tiers", "min_events", "no_data"}):
        check.fail(f"alerting.{unknown}", "is not a field of alerting. Fix: use tiers, min_events or no_data")
    no_data_s, no_data_severity = _no_data(check, alerting.get("no_data", DEFAULT_NO_DATA))
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
               no_data_s, no_data_severity, str(doc.get("description", "")), doc.get("runbook_url"), labels), []


def _no_data(check: _Checker, raw: Any) -> tuple[int | None, str]:
    if raw in ("off", False):
        return None, "ticket"
    if isinstance(raw, str):
        raw = {"after": raw}
    if not isinstance(raw, dict) or set(raw) - {"after", "severity"}:
        check.fail("alerting.no_data", f"is {raw!r}. Fix: give off, a duration like 15m, "
                                       "or {after: 15m, severity: ticket}")
        return None, "ticket"
    after = check.duration(raw.get("after", DEFAULT_NO_DATA["after"]), "alerting.no_data.after")
    severity = raw.get("severity", DEFAULT_NO_DATA["severity"])
    if severity not in SEVERITIES:
        check.fail("alerting.no_data.severity", f"is {severity!r}. Fix: use one of {', '.join(SEVERITIES)}")
    return after, severity


def _number(check: _Checker, doc: dict, name: str) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        check.fail(name, f"is {value!r}. Fix: give a number")
        return None
    return float(value)


def parse_model(doc: Any, file: str, position: int) -> tuple[Policy | None, list[SloProblem]]:
    """A ``models:`` entry: a policy's fields but the levels (window 5m unless given)."""
    return parse_policy(doc, file, position, kind="model")


def parse_policy(doc: Any, file: str, position: int, kind: str = "policy") -> tuple[Policy | None, list[SloProblem]]:
    name = doc.get("name") if isinstance(doc, dict) else None
    plural = {"policy": "policies", "model": "models"}[kind]
    check = _Checker(file, f"{kind} '{name}'" if isinstance(name, str) and name else f"{plural}[{position}]")
    if not isinstance(doc, dict):
        check.fail(plural, f"entry {position} is {doc!r}. Fix: each {kind} is a mapping")
        return None, check.problems
    fields = POLICY_FIELDS if kind == "policy" else MODEL_FIELDS
    for unknown in sorted(set(doc) - fields):
        check.fail(unknown, f"is not a field of a {kind}. "
                            f"Fix: remove it or use one of {', '.join(sorted(fields))}")
    name, service, metric = check.text(doc, "name"), check.text(doc, "service"), check.text(doc, "metric")
    aggregate = doc.get("aggregate")
    if aggregate not in AGGREGATES:
        check.fail("aggregate", f"is {aggregate!r}. Fix: use one of {', '.join(AGGREGATES)}")
    window_s = check.duration(doc.get("window", "1m" if kind == "policy" else "5m"), "window")
    if window_s is not None and (window_s > MAX_POLICY_WINDOW_S or window_s % 10):
        check.fail("window", f"is {doc.get('window')!r}. Fix: use a multiple of 10s up to 6h")
    direction = doc.get("direction", "above")
    if direction not in ("above", "below"):
        check.fail("direction", f"is {direction!r}. Fix: use above (larger is worse) or below (smaller is worse)")
    warning, critical = _number(check, doc, "warning"), _number(check, doc, "critical")
    if kind == "policy" and warning is None and critical is None and "warning" not in doc and "critical" not in doc:
        check.fail("critical", "and warning are both missing. Fix: give at least one level")
    if warning is not None and critical is not None and direction in ("above", "below"):
        safe = warning < critical if direction == "above" else warning > critical
        if not safe:
            side = "below" if direction == "above" else "above"
            check.fail("warning", f"({warning:g}) is not on the safe side of critical ({critical:g}) for direction "
                                  f"{direction}. Fix: make warning {side} critical, or swap them")
    low = _number(check, doc, "min")
    high = _number(check, doc, "max")
    if aggregate in ("error_ratio", "ece", "brier"):
        low = 0.0 if low is None else low
        high = 1.0 if high is None else high
    elif aggregate == "throughput":
        low = 0.0 if low is None else low
    for level_name, level in (("warning", warning), ("critical", critical)):
        if level is None:
            continue
        if (low is not None and level < low) or (high is not None and level > high):
            check.fail(level_name, f"({level:g}) is outside the bounds [{_bound(low)}, {_bound(high)}] of "
                                   f"{aggregate}. Fix: choose a level within the bounds")
    consecutive = doc.get("consecutive", 1)
    if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
        check.fail("consecutive", f"is {consecutive!r}. Fix: give a whole number of windows, 1 or more")
    if check.problems:
        return None, check.problems
    return Policy(name, service, metric, aggregate, window_s, direction, warning, critical, consecutive,
                  doc.get("runbook_url"), low, high), []


def _bound(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


def parse_document(document: dict, path: str, number: int) -> tuple[Definitions, list[SloProblem]]:
    """The ``slos:``, ``policies:`` and ``models:`` lists of one YAML document."""
    problems: list[SloProblem] = []
    found: dict[str, list] = {"slos": [], "policies": [], "models": []}
    for key, parse in (("slos", parse_slo), ("policies", parse_policy), ("models", parse_model)):
        entries = document.get(key, [])
        if not isinstance(entries, list):
            problems.append(SloProblem(path, f"document {number}", key, f"must be a list. Fix: write {key}: [...]"))
            continue
        for position, entry in enumerate(entries):
            item, errors = parse(entry, path, position)
            problems.extend(errors)
            if item is not None:
                found[key].append(item)
    return Definitions(tuple(found["slos"]), tuple(found["policies"]), tuple(found["models"])), problems


def check_unique(definitions: Definitions, path: str) -> list[SloProblem]:
    problems = []
    # Policies and models share their names' space: a model's state is kept under its name as a policy's is.
    for kind, items in (("slo", definitions.slos), ("policy or model", (*definitions.policies, *definitions.models))):
        seen: set[str] = set()
        for item in items:
            if item.name in seen:
                problems.append(SloProblem(path, f"{kind} '{item.name}'", "name",
                                           f"is used twice. Fix: give every {kind} its own name"))
            seen.add(item.name)
    return problems


def merge(*parts: Definitions) -> Definitions:
    return Definitions(tuple(s for p in parts for s in p.slos), tuple(q for p in parts for q in p.policies),
                       tuple(m for p in parts for m in p.models))


def load_definition_file(path: str) -> tuple[Definitions, list[SloProblem]]:
    """A file of slostream documents (``slos:``/``policies:``) and/or OpenSLO v1 documents."""
    try:
        with open(path) as handle:
            documents = [d for d in yaml.safe_load_all(handle) if d is not None]
    except OSError as exc:
        return Definitions(), [SloProblem(path, "file", "-", f"cannot be read ({exc.strerror}). "
                                                             "Fix: pass an existing file")]
    except yaml.YAMLError as exc:
        return Definitions(), [SloProblem(path, "file", "-",
                                          f"is not valid YAML ({exc}). Fix: correct the syntax shown")]
    problems: list[SloProblem] = []
    parts: list[Definitions] = []
    openslo_docs = []
    for number, document in enumerate(documents):
        if isinstance(document, dict) and is_openslo(document):
            openslo_docs.append((number, document))
        elif isinstance(document, dict) and ("slos" in document or "policies" in document or "models" in document):
            definitions, found = parse_document(document, path, number)
            parts.append(definitions)
            problems.extend(found)
        else:
            problems.append(SloProblem(path, f"document {number}", "slos",
                                       "is missing. Fix: put definitions under 'slos:' or 'policies:', "
                                       "or write an OpenSLO v1 document (apiVersion: openslo/v1)"))
    if openslo_docs:
        definitions, found = parse_openslo(openslo_docs, path)
        parts.append(definitions)
        problems.extend(found)
    merged = merge(*parts)
    return merged, problems + check_unique(merged, path)

"""OpenSLO v1 ``SLO`` and ``SLI`` documents, turned into slostream SLOs.

The supported subset (README, "OpenSLO"): kinds SLO and SLI; indicators inline
(``spec.indicator``) or referenced (``spec.indicatorRef``, an SLI in the same
file); ``ratioMetric`` (good or bad over total) and ``thresholdMetric`` whose
metric sources are ``type: slostream`` with ``spec: {service, metric}``;
budgeting ``Occurrences`` and ``Timeslices``; one rolling time window
(``isRolling: true``, duration like ``28d``) or one calendar window
(``isRolling: false``, duration ``1w``, ``1M`` or ``1Q`` with ``calendar.timeZone``).
Every objective becomes one SLO. Other kinds (Service, DataSource, AlertPolicy...)
are accepted and ignored; anything that breaks the spec, or that slostream
cannot honour, is reported with file, document and field.
"""

from __future__ import annotations

from typing import Any

from slostream.core.budget import default_tiers
from slostream.core.durations import parse_duration, split_duration
from slostream.core.objectives import GoodRule, Slo, SloWindow, Timeslices
from slostream.definitions.model import DEFAULT_NO_DATA, Definitions, SloProblem, known_time_zone

API_VERSION = "openslo/v1"
CALENDAR_UNITS = {"w": "week", "M": "month", "Q": "quarter"}
OPS = {"lte": "value_le", "lt": "value_lt", "gte": "value_ge", "gt": "value_gt"}
SOURCE_TYPE = "slostream"


def is_openslo(document: dict) -> bool:
    return isinstance(document.get("apiVersion"), str) and document["apiVersion"].startswith("openslo/")


class _Doc:
    def __init__(self, path: str, number: int, doc: dict, problems: list[SloProblem]):
        metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        self.name = metadata.get("name")
        self.label = f"document {number} ({doc.get('kind')} '{self.name}')"
        self.path = path
        self.problems = problems

    def fail(self, field: str, message: str) -> None:
        self.problems.append(SloProblem(self.path, self.label, field, message))


def parse_openslo(documents: list[tuple[int, dict]], path: str) -> tuple[Definitions, list[SloProblem]]:
    problems: list[SloProblem] = []
    slis: dict[str, dict] = {}
    slo_docs = []
    for number, doc in documents:
        where = _Doc(path, number, doc, problems)
        if doc.get("apiVersion") != API_VERSION:
            where.fail("apiVersion", f"is {doc.get('apiVersion')!r}. Fix: slostream reads {API_VERSION} documents")
            continue
        if not isinstance(where.name, str) or not where.name:
            where.fail("metadata.name", "is required. Fix: name the object")
            continue
        kind = doc.get("kind")
        if kind == "SLI":
            slis[where.name] = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        elif kind == "SLO":
            slo_docs.append((where, doc.get("spec") if isinstance(doc.get("spec"), dict) else {}))
    slos = []
    for where, spec in slo_docs:
        slos.extend(_slo(where, spec, slis))
    return Definitions(tuple(slos), ()), problems


def _slo(where: _Doc, spec: dict, slis: dict[str, dict]) -> list[Slo]:
    before = len(where.problems)
    indicator = _indicator(where, spec, slis)
    window = _time_window(where, spec.get("timeWindow"))
    method = spec.get("budgetingMethod")
    if method not in ("Occurrences", "Timeslices"):
        where.fail("spec.budgetingMethod", f"is {method!r}. Fix: use Occurrences or Timeslices "
                                           "(RatioTimeslices is not supported)")
    objectives = spec.get("objectives")
    if not isinstance(objectives, list) or not objectives:
        where.fail("spec.objectives", "is required. Fix: give at least one objective with a target")
        return []
    built = []
    for index, objective in enumerate(objectives):
        field = f"spec.objectives[{index}]"
        if not isinstance(objective, dict):
            where.fail(field, f"is {objective!r}. Fix: give a mapping with target")
            continue
        good = _good_rule(where, field, objective, indicator)
        target = objective.get("target")
        if "targetPercent" in objective and target is None:
            percent = objective["targetPercent"]
            target = percent / 100 if isinstance(percent, (int, float)) and not isinstance(percent, bool) else None
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
            where.fail(f"{field}.target", f"is {objective.get('target')!r}. Fix: give a ratio strictly between "
                                          "0 and 1 (or targetPercent between 0 and 100)")
            target = None
        budgeting: Any = "occurrences"
        if method == "Timeslices":
            budgeting = _timeslices(where, field, objective)
        elif "timeSliceTarget" in objective or "timeSliceWindow" in objective:
            where.fail(f"{field}.timeSliceTarget", "is only for budgetingMethod Timeslices. "
                                                   "Fix: remove it or set budgetingMethod: Timeslices")
        if good is None or target is None or window is None or budgeting is None or indicator is None:
            continue
        name = where.name if len(objectives) == 1 else f"{where.name}/{objective.get('name') or index}"
        built.append(Slo(
            name=name, service=indicator["service"], metric=indicator["metric"], objective=float(target),
            window=window, good=good, budgeting=budgeting, tiers=default_tiers(window.period_s),
            no_data_s=parse_duration(DEFAULT_NO_DATA["after"]), no_data_severity=DEFAULT_NO_DATA["severity"],
            description=str(spec.get("description", "")),
        ))
    return built if len(where.problems) == before else []


def _indicator(where: _Doc, spec: dict, slis: dict[str, dict]) -> dict | None:
    inline, ref = spec.get("indicator"), spec.get("indicatorRef")
    if (inline is None) == (ref is None):
        where.fail("spec.indicator", "Fix: give exactly one of indicator (inline SLI) or indicatorRef")
        return None
    if ref is not None:
        if ref not in slis:
            where.fail("spec.indicatorRef", f"names {ref!r}, which is no SLI in this file. "
                                            "Fix: add that SLI document or inline the indicator")
            return None
        sli, field = slis[ref], "SLI " + repr(ref) + ".spec"
    else:
        sli = inline.get("spec") if isinstance(inline, dict) else None
        field = "spec.indicator.spec"
        if not isinstance(sli, dict):
            where.fail(field, "is required. Fix: give the inline SLI's spec")
            return None
    ratio, threshold = sli.get("ratioMetric"), sli.get("thresholdMetric")
    if (ratio is None) == (threshold is None):
        where.fail(field, "Fix: give exactly one of ratioMetric or thresholdMetric")
        return None
    if threshold is not None:
        source = _source(where, f"{field}.thresholdMetric", threshold)
        return None if source is None else {**source, "kind": "threshold"}
    if not isinstance(ratio, dict):
        where.fail(f"{field}.ratioMetric", "must be a mapping")
        return None
    parts = [k for k in ("good", "bad") if k in ratio]
    if len(parts) != 1 or "total" not in ratio:
        where.fail(f"{field}.ratioMetric", "Fix: give total and exactly one of good or bad")
        return None
    sources = [_source(where, f"{field}.ratioMetric.{k}", ratio[k]) for k in (parts[0], "total")]
    if None in sources:
        return None
    if sources[0] != sources[1]:
        where.fail(f"{field}.ratioMetric", "good/bad and total name different slostream series. Fix: both "
                                           "count the ok outcome of one service and metric")
        return None
    return {**sources[0], "kind": "ratio"}


def _source(where: _Doc, field: str, holder: Any) -> dict | None:
    source = holder.get("metricSource") if isinstance(holder, dict) else None
    spec = source.get("spec") if isinstance(source, dict) else None
    if not isinstance(source, dict) or source.get("type") != SOURCE_TYPE or not isinstance(spec, dict):
        where.fail(f"{field}.metricSource", f"is {source!r}. Fix: use type: {SOURCE_TYPE} with "
                                            "spec: {service: NAME, metric: NAME}")
        return None
    service, metric = spec.get("service"), spec.get("metric")
    if not isinstance(service, str) or not service or not isinstance(metric, str) or not metric:
        where.fail(f"{field}.metricSource.spec", "needs service and metric. Fix: name the slostream series")
        return None
    return {"service": service, "metric": metric}


def _good_rule(where: _Doc, field: str, objective: dict, indicator: dict | None) -> GoodRule | None:
    if indicator is None:
        return None
    op, value = objective.get("op"), objective.get("value")
    if indicator["kind"] == "ratio":
        if op is not None or value is not None:
            where.fail(f"{field}.op", "op and value apply only to a thresholdMetric SLI (OpenSLO v1); a "
                                      "ratioMetric objective has only a target. Fix: remove op and value")
            return None
        return GoodRule("ok")
    if op not in OPS:
        where.fail(f"{field}.op", f"is {op!r}. Fix: a thresholdMetric objective needs op: lte, lt, gte or gt")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        where.fail(f"{field}.value", f"is {value!r}. Fix: a thresholdMetric objective needs a numeric value")
        return None
    return GoodRule(OPS[op], float(value))


def _timeslices(where: _Doc, field: str, objective: dict) -> Timeslices | None:
    target, window = objective.get("timeSliceTarget"), objective.get("timeSliceWindow")
    ok = True
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        where.fail(f"{field}.timeSliceTarget", f"is {target!r}. Fix: Timeslices needs a ratio in (0, 1]")
        ok = False
    seconds = parse_duration(window)
    if seconds is None or seconds % 10:
        where.fail(f"{field}.timeSliceWindow", f"is {window!r}. Fix: give a duration like 1m or 5m "
                                               "(a multiple of 10s)")
        ok = False
    return Timeslices(seconds, float(target)) if ok else None


def _time_window(where: _Doc, raw: Any) -> SloWindow | None:
    if not isinstance(raw, list) or len(raw) != 1 or not isinstance(raw[0], dict):
        where.fail("spec.timeWindow", f"is {raw!r}. Fix: give a list with exactly one time window")
        return None
    window = raw[0]
    duration = window.get("duration")
    if window.get("isRolling") is True:
        seconds = parse_duration(duration)
        if seconds is None:
            where.fail("spec.timeWindow[0].duration", f"is {duration!r}. Fix: a rolling window needs a duration "
                                                      "in s, m, h, d or w, like 28d")
            return None
        return SloWindow(rolling_s=seconds)
    parts = split_duration(str(duration))
    if parts is None or parts[0] != 1 or parts[1] not in CALENDAR_UNITS:
        where.fail("spec.timeWindow[0].duration", f"is {duration!r}. Fix: a calendar window (isRolling: false) "
                                                  "is 1w, 1M or 1Q here")
        return None
    calendar = window.get("calendar") if isinstance(window.get("calendar"), dict) else {}
    zone = calendar.get("timeZone", "UTC")
    if not known_time_zone(zone):
        where.fail("spec.timeWindow[0].calendar.timeZone", f"is {zone!r}. Fix: use an IANA name like Europe/Berlin")
        return None
    return SloWindow(calendar=CALENDAR_UNITS[parts[1]], timezone=str(zone))

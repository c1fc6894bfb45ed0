"""The ``drift:`` section of the settings: the default drift rule and overrides by service and
metric glob (see ``core.drift_rules``). Every problem names the file, the field and the fix.

```yaml
drift:
  enabled: true                  # default: every series watched
  aggregates: [p95, error_ratio] # p50 p90 p95 p99 mean max error_ratio throughput
  detector: multiscale           # or river's adwin, page_hinkley, kswin
  params: {}                     # a river detector's own parameters (multiscale takes none)
  false_per_week: 0.5            # multiscale: false detections a series-week its thresholds aim at
  warmup_windows: 120
  cooldown: 1h                   # no detection for this long after one: the change is "in progress"
  alert: off                     # or a severity (warning, ...): each detection also fires SLIDrift
  overrides:
    - {service: "batch-*", enabled: false}
    - {metric: "queue_depth", aggregates: [max], detector: page_hinkley}
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

from slostream.core.alerts import SEVERITIES
from slostream.core.drift import DETECTORS, DriftWatch
from slostream.core.drift_rules import AGGREGATE_FIELDS, DriftRule, DriftRules
from slostream.core.durations import parse_duration

RULE_FIELDS = ("enabled", "aggregates", "detector", "params", "false_per_week", "warmup_windows", "cooldown", "alert")



class DriftSettingsError(ValueError):
    pass


def parse_drift(raw: Any, where: str) -> DriftRules:
    if raw is None:
        return DriftRules()
    if not isinstance(raw, dict):
        raise DriftSettingsError(f"{where}: field 'drift' is {raw!r}. Fix: write a mapping (see README, Drift).")
    unknown = set(raw) - {*RULE_FIELDS, "overrides"}
    if unknown:
        raise DriftSettingsError(f"{where}: field 'drift.{sorted(unknown)[0]}' is unknown. "
                                 f"Fix: use {', '.join((*RULE_FIELDS, 'overrides'))}.")
    default = _rule(raw, "drift", where, DriftRule())
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list):
        raise DriftSettingsError(f"{where}: field 'drift.overrides' is {overrides!r}. Fix: write a list of rules.")
    blank = DriftRule(enabled=None, aggregates=None, detector=None, params=None, false_per_week=None,
                      warmup_windows=None, cooldown_s=None, alert=None)
    rules = []
    for number, item in enumerate(overrides):
        name = f"drift.overrides[{number}]"
        if not isinstance(item, dict) or set(item) - {*RULE_FIELDS, "service", "metric"}:
            raise DriftSettingsError(f"{where}: field '{name}' is {item!r}. Fix: a mapping of service, metric "
                                     f"(globs) and {', '.join(RULE_FIELDS)}.")
        for glob in ("service", "metric"):
            if not isinstance(item.get(glob, "*"), str):
                raise DriftSettingsError(f"{where}: field '{name}.{glob}' is {item[glob]!r}. Fix: a glob string.")
        rule = _rule(item, name, where, blank)
        rules.append(dataclasses.replace(rule, service=item.get("service", "*"), metric=item.get("metric", "*")))
        _check_detector(rules[-1].over(default), name, where)
    return DriftRules(default, tuple(rules))


def _rule(raw: dict, name: str, where: str, base: DriftRule) -> DriftRule:
    def fail(field: str, fix: str) -> DriftSettingsError:
        return DriftSettingsError(f"{where}: field '{name}.{field}' is {raw[field]!r}. Fix: {fix}.")

    values = {}
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise fail("enabled", "true or false")
        values["enabled"] = raw["enabled"]
    if "aggregates" in raw:
        aggregates = raw["aggregates"]
        if not isinstance(aggregates, list) or not all(a in AGGREGATE_FIELDS for a in aggregates):
            raise fail("aggregates", f"a list of {', '.join(AGGREGATE_FIELDS)}")
        values["aggregates"] = tuple(dict.fromkeys(aggregates))
    if "detector" in raw:
        if raw["detector"] not in DETECTORS:
            raise fail("detector", f"one of {', '.join(DETECTORS)}")
        values["detector"] = raw["detector"]
    if "params" in raw:
        if not isinstance(raw["params"], dict):
            raise fail("params", "a mapping of the detector's parameters")
        values["params"] = dict(raw["params"])
    if "false_per_week" in raw:
        rate = raw["false_per_week"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 100:
            raise fail("false_per_week", "a number of false detections a series-week, above 0 and at most 100")
        values["false_per_week"] = float(rate)
    if "warmup_windows" in raw:
        if not isinstance(raw["warmup_windows"], int) or isinstance(raw["warmup_windows"], bool) \
                or raw["warmup_windows"] < 0:
            raise fail("warmup_windows", "a whole number of windows, 0 or more")
        values["warmup_windows"] = raw["warmup_windows"]
    if "cooldown" in raw:
        seconds = parse_duration(raw["cooldown"])
        if seconds is None:
            raise fail("cooldown", "a duration such as 30m or 1h")
        values["cooldown_s"] = float(seconds)
    if "alert" in raw:
        alert = "off" if raw["alert"] is False else raw["alert"]
        if alert != "off" and alert not in SEVERITIES:
            raise fail("alert", f"off, or a severity: {', '.join(SEVERITIES)}")
        values["alert"] = alert
    rule = dataclasses.replace(base, **values)
    if base.detector is not None:
        _check_detector(rule, name, where)
    return rule


def _check_detector(rule: DriftRule, name: str, where: str) -> None:
    """The detector must accept its parameters: made once here, not first at a series' first window."""
    try:
        DriftWatch(rule.detector, rule.params).check()
    except (TypeError, ValueError) as exc:
        raise DriftSettingsError(f"{where}: field '{name}.params' ({rule.params!r}) does not suit detector "
                                 f"{rule.detector!r}: {exc}. Fix: use the river detector's parameter names "
                                 "(multiscale takes none).") from None

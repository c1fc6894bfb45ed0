"""Drift and threshold models on real data (issue 26, point 5): the 17 AWS CloudWatch series of the Numenta Anomaly
Benchmark (``realAWSCloudwatch``, MIT licence), with their labelled anomaly windows.

Each series is a metric sampled every 5 minutes; each sample is one closed report window's p95
(one value), fed through ``SeriesDrift`` with the default rule, as the drift evaluator feeds it.
Next to it, river's ADWIN (``clock=1``) and PageHinkley on the same standardised residuals, from
when ours reads them against the hours of the day, with the same cooldown
(``drift_scenarios.RiverBaselines``).

Scored as NAB scores windows: a window with a detection in it is found (its first detection is a
true one, later ones in it are neither true nor false); a detection outside every window is false.
Detections in a file's first 15% (NAB's probationary period) are not scored. Precision is true
over true plus false detections, recall found windows over windows.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from slostream.bench.drift_scenarios import RiverBaselines
from slostream.bench.threshold_scenarios import PER_WEEK, TARGETS, naive_interval, summarise
from slostream.core.drift_rules import DriftRule
from slostream.core.threshold_model import ThresholdModel
from slostream.pipeline.evaluators.drift import SeriesDrift

NAB_DIR_ENV = "SLOSTREAM_NAB_DIR"
DEFAULT_NAB_DIR = "../shared/data/nab-aws"
PROBATION = 0.15
DETECTORS = ("ours", "adwin", "page_hinkley")
WINDOW_S = 300
WEEK_S = 7 * 86400


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _series(path: Path) -> tuple[list[float], list[float]]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [_seconds(r["timestamp"]) for r in rows], [float(r["value"]) for r in rows]


def _detections(times: list[float], values: list[float], rule: DriftRule) -> dict[str, list[float]]:
    """The event times at which each detector fires on one series."""
    series = SeriesDrift.of_rule(rule)
    watch = series.watches["p95"]
    baselines = RiverBaselines()
    ours = []
    for ts, value in zip(times, values):
        seen = watch._next
        window = {"window_end": ts, "p95": value, "ok": 0, "errors": 0}
        ours += [d.detected_at for aggregate, d in series.update(window) if aggregate == "p95"]
        baselines.follow(ts, watch, seen)
    return {"ours": ours, **{name: [t for t, _ in baselines.found(name)] for name in ("adwin", "page_hinkley")}}


def _score(found: list[float], windows: list[tuple[float, float]], scored_from: float) -> tuple[int, int, int]:
    """True detections (windows found), false detections, and windows, of one series."""
    hit, false = set(), 0
    for at in found:
        if at < scored_from:
            continue
        inside = [i for i, (low, high) in enumerate(windows) if low <= at <= high]
        if inside:
            hit.update(inside)
        else:
            false += 1
    return len(hit), false, len(windows)


def nab_drift(directory: str | None = None, false_per_week: float | None = None) -> dict:
    """Per detector: precision, recall and F1 over every labelled window of the 17 series, and
    false detections a day; per series, each detector's (found windows, false detections). Ours
    with the default rule, or another ``false_per_week``."""
    # Metric samples: no outcomes, so the p95 is the only watch and has the whole rate.
    rule = DriftRule(aggregates=("p95",))
    if false_per_week is not None:
        rule = DriftRule(aggregates=("p95",), false_per_week=false_per_week)
    root = Path(directory or os.environ.get(NAB_DIR_ENV, DEFAULT_NAB_DIR))
    labels = json.loads((root / "windows.json").read_text())
    totals = {name: [0, 0, 0] for name in DETECTORS}
    days = 0.0
    per_series = {}
    for name, spans in sorted(labels.items()):
        times, values = _series(root / name)
        scored_from = times[int(PROBATION * len(times))]
        days += (times[-1] - scored_from) / 86400
        windows = [(_seconds(low), _seconds(high)) for low, high in spans]
        found = _detections(times, values, rule)
        per_series[name] = {}
        for detector in DETECTORS:
            true, false, count = _score(found[detector], windows, scored_from)
            per_series[name][detector] = [true, false]
            for i, n in enumerate((true, false, count)):
                totals[detector][i] += n
    figures: dict = {"series": len(labels), "scored_days": round(days, 1), "windows": totals["ours"][2]}
    for detector, (true, false, count) in totals.items():
        precision = true / (true + false) if true + false else math.nan
        recall = true / count if count else math.nan
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        figures[detector] = {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3),
                             "false_per_day": round(false / days, 3)}
    figures["per_series"] = per_series
    return figures


def nab_thresholds(directory: str | None = None) -> dict:
    """Threshold models on the same series: each sample learned as one closed five-minute window's
    value, as the threshold evaluator feeds it; after the first week, the levels predicted to be
    crossed by 2% and 0.5% of windows (the balanced strategy's warning and critical targets) are
    judged on the following week, next to the naive baseline with the same interval machinery
    (``threshold_scenarios.naive_interval``). Also the model's own one-day checks (adaptive
    conformal inference) over each whole series: how many held."""
    root = Path(directory or os.environ.get(NAB_DIR_ENV, DEFAULT_NAB_DIR))
    labels = json.loads((root / "windows.json").read_text())
    rows, days, skipped = [], [], []
    for name in sorted(labels):
        times, values = _series(root / name)
        model = _CheckedModel("above", WINDOW_S)
        model.checks = []
        learned = [i for i, ts in enumerate(times) if ts < times[0] + WEEK_S]
        for ts, value in zip(times[:len(learned)], values[:len(learned)]):
            model.update(ts, value)
        start = times[len(learned) - 1]
        held_out = [(ts, v) for ts, v in zip(times[len(learned):], values[len(learned):]) if ts <= start + WEEK_S]
        if not held_out or held_out[-1][0] < start + WEEK_S - 86400:
            skipped.append(name)
        else:
            week = model.forecast(start, WEEK_S)
            held_values = np.array([v for _, v in held_out])
            last_ends, last_values = np.array(times[:len(learned)]), np.array(values[:len(learned)])
            for target in TARGETS:
                level = model.level_for(target, week)
                prediction = model.predict(level, week)
                rows.append({"who": "model", "target": target, "predicted": prediction.violation_rate,
                             "low": prediction.ci_low, "high": prediction.ci_high,
                             "actual": float(np.mean(held_values > level)), "series": name})
                naive_level = float(np.quantile(last_values, 1 - target))
                low, high = naive_interval(last_ends, last_values, naive_level, model.alpha)
                rows.append({"who": "naive", "target": target, "predicted": float(np.mean(last_values > naive_level)),
                             "low": low, "high": high, "actual": float(np.mean(held_values > naive_level)),
                             "series": name})
        for ts, value in zip(times[len(learned):], values[len(learned):]):
            model.update(ts, value)
        days += model.checks
    figures: dict = {"series": len(labels), "judged_weeks": len(labels) - len(skipped), "too_short": skipped}
    for who in ("model", "naive"):
        for target in TARGETS:
            figures[f"{who}_{target}"] = summarise([r for r in rows if r["who"] == who and r["target"] == target],
                                                   windows=PER_WEEK)
    figures["one_day_checks"] = {"checks": len(days), "covered": float(np.mean(days)) if days else math.nan}
    figures["per_series"] = {r["series"]: {k: round(r[k], 4) for k in ("predicted", "low", "high", "actual")}
                             for r in rows if r["who"] == "model" and r["target"] == TARGETS[0]}
    return figures


class _CheckedModel(ThresholdModel):
    """The model, its one-day checks kept (whether each held)."""

    __slots__ = ("checks",)

    def recalibrate(self, covered: bool) -> None:
        self.checks.append(covered)
        super().recalibrate(covered)

"""Recommended warning and critical levels of a policy, from its threshold model.

**The objective.** For a level with target violation rate ``r`` (the share of windows on the wrong
side), the cost of a candidate level ``T`` is

    J(T) = |ln((p(T) + r/10) / (r + r/10))|          reliability: the predicted rate p on target
         + 2.0 * share of hours with p_h(T) > 3 r      achievability: met in most hours of the week
         + s * |ln(T / current)|                       stability: small changes

over the predicted rates of the horizon (``ThresholdModel.hourly_rates``), ``s`` the strategy's
stability weight. Candidates are the level whose predicted rate is exactly ``r``, 41 levels
around it (up to ±50%, evenly in log), and the current level. The best is then approached, not
jumped to: ``current * (best / current) ** adaptation_rate``, at most ``max_change`` either way.

**Guards**, in order: the bounds ``min``/``max``; warning stays on the safe side of critical
(5% inside it); the oscillation guard (a change against the direction of one of the last
``OSCILLATION_CYCLES`` changes is halved, and withheld when what is left is under 2%); a change
under 1% is no change. Each guard that acted is named in ``guards``.

**Strategies** (``STRATEGIES``): target rates (a threshold SLO's: ``slo_budget_burn`` times its error
budget, so the SLO keeps a margin), ``adaptation_rate``, ``max_change``, the stability
weight, and how much history the model needs before any recommendation. ``adaptive`` moves as far
as the model's confidence allows: ``adaptation_rate = confidence``, ``max_change = 0.1 + 0.4 *
confidence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from . import compliance_model, threshold_model
from .compliance_model import ComplianceForecast, ComplianceModel, CompliancePrediction
from .threshold_model import MODEL_VERSION, Forecast, Prediction, ThresholdModel

WEEK_S = 604800
ACHIEVABILITY_WEIGHT = 2.0
HOUR_RATE_LIMIT = 3.0  # an hour whose predicted rate is over this many times the target misses it
OSCILLATION_CYCLES = 3
NO_CHANGE = 0.01
WITHHOLD_BELOW = 0.02
WARNING_INSIDE_CRITICAL = 0.05
FULL_CONFIDENCE_SPAN_S = 14 * 86400
FULL_CONFIDENCE_WINDOWS = 2016


@dataclass(frozen=True)
class Strategy:
    name: str
    warning_rate: float
    critical_rate: float
    slo_budget_burn: float  # a threshold SLO's target bad share, as a multiple of its error budget
    adaptation_rate: float | None  # None: the model's confidence
    max_change: float | None  # None: 0.1 + 0.4 * confidence
    stability_weight: float
    min_windows: int
    min_span_s: float

    def rate(self, level: str) -> float:
        return self.warning_rate if level == "warning" else self.critical_rate

    def as_dict(self) -> dict:
        return {"name": self.name, "warning_rate": self.warning_rate, "critical_rate": self.critical_rate,
                "slo_budget_burn": self.slo_budget_burn,
                "adaptation_rate": self.adaptation_rate, "max_change": self.max_change,
                "stability_weight": self.stability_weight, "min_windows": self.min_windows,
                "min_span_s": self.min_span_s}


STRATEGIES = {
    "conservative": Strategy("conservative", 0.01, 0.0025, 0.5, 0.5, 0.10, 1.0, 2016, 14 * 86400),
    "balanced": Strategy("balanced", 0.02, 0.005, 0.7, 0.7, 0.25, 0.5, 1008, 7 * 86400),
    "aggressive": Strategy("aggressive", 0.05, 0.01, 0.9, 1.0, 0.50, 0.2, 288, 2 * 86400),
    "adaptive": Strategy("adaptive", 0.02, 0.005, 0.7, None, None, 0.5, 1008, 7 * 86400),
}


@dataclass(frozen=True)
class LevelChoice:
    level: str  # warning, critical, or an SLO's threshold
    current: float | None  # None: a model without a policy (``models:``)
    recommended: float
    predicted_current: Prediction | CompliancePrediction | None
    predicted_recommended: Prediction | CompliancePrediction
    guards: tuple[str, ...]
    status: str  # changed, unchanged, withheld; new (no current level)


def ready(model: ThresholdModel | ComplianceModel, strategy: Strategy, window_s: float) -> str | None:
    """Why the model cannot recommend yet (None: it can). The strategy's windows are asked of
    windows of ``window_s`` only as far as its span holds a quarter of them: a policy of hour-long
    windows (168 a week) still recommends after the balanced strategy's seven days, and one of a
    series that reports only in working hours too."""
    needed = min(strategy.min_windows, math.ceil(strategy.min_span_s / window_s / 4))
    if model.seen < needed:
        return f"{model.seen} windows learned, the {strategy.name} strategy needs {needed}"
    if model.span_s < strategy.min_span_s:
        return (f"{model.span_s / 86400:.1f} days of history, the {strategy.name} strategy needs "
                f"{strategy.min_span_s / 86400:.0f}")
    return None


def confidence(model: ThresholdModel, forecast: Forecast, target: float, exact: float) -> float:
    """Data sufficiency (span of history and windows, each toward two weeks) times fit: how narrow
    the interval of ``exact``, the level predicted to meet ``target``, is against the target."""
    sufficiency = min(1.0, model.span_s / FULL_CONFIDENCE_SPAN_S) * min(1.0, model.seen / FULL_CONFIDENCE_WINDOWS)
    prediction = model.predict(exact, forecast)
    return sufficiency / (1.0 + (prediction.ci_high - prediction.ci_low) / (2 * target))


def choose(model: ThresholdModel | ComplianceModel, forecast: Forecast | ComplianceForecast, level: str,
           current: float, target: float, exact: float, strategy: Strategy, model_confidence: float,
           past_changes: list[float], bounds: tuple[float | None, float | None], critical: float | None) -> LevelChoice:
    """The recommended value of one level (``warning``, ``critical``, or an SLO's ``threshold``; see
    the module). ``target``: its target violation rate; ``exact``: the level predicted to meet it
    (``level_for``); ``past_changes``: the log-ratios of the last changes of this level, newest
    last; ``critical``: the critical level the warning must stay inside (None otherwise)."""
    candidates = np.r_[exact * np.exp(np.linspace(-0.5, 0.5, 41)), current]
    best = min(candidates.tolist(), key=lambda t: _cost(model, forecast, t, target, current, strategy))
    adaptation = model_confidence if strategy.adaptation_rate is None else strategy.adaptation_rate
    max_change = 0.1 + 0.4 * model_confidence if strategy.max_change is None else strategy.max_change
    guards = []
    change = adaptation * _log_ratio(best, current)
    if abs(change) > math.log1p(max_change):
        change = math.copysign(math.log1p(max_change), change)
        guards.append(f"change held to {max_change:.0%} a cycle ({strategy.name})")
    recommended = _within(model, current * math.exp(change), bounds, critical, guards)
    status = "changed"
    change = _log_ratio(recommended, current)
    reversed_from = [c for c in past_changes[-OSCILLATION_CYCLES:] if c * change < 0]
    if reversed_from and abs(change) >= NO_CHANGE:
        change /= 2
        recommended = current * math.exp(change)
        guards.append(f"halved: reverses a change of {math.expm1(reversed_from[-1]):+.1%} within the last "
                      f"{OSCILLATION_CYCLES} cycles")
        if abs(change) < WITHHOLD_BELOW:
            recommended, status = current, "withheld"
            guards.append("withheld: what is left of the reversal is under 2%")
    if status == "changed" and abs(_log_ratio(recommended, current)) < NO_CHANGE:
        recommended, status = current, "unchanged"
    return LevelChoice(level, current, recommended, model.predict(current, forecast),
                       model.predict(recommended, forecast), tuple(guards), status)


def first_level(model: ThresholdModel, forecast: Forecast, level: str, exact: float,
                bounds: tuple[float | None, float | None], critical: float | None) -> LevelChoice:
    """The level of a model without a policy (``models:``): the one predicted to meet its target,
    within the bounds and, for the warning, inside ``critical``; ``current`` None, status ``new``."""
    guards: list[str] = []
    recommended = _within(model, exact, bounds, critical, guards)
    return LevelChoice(level, None, recommended, None, model.predict(recommended, forecast), tuple(guards), "new")


def _within(model: ThresholdModel | ComplianceModel, recommended: float, bounds: tuple[float | None, float | None],
            critical: float | None, guards: list[str]) -> float:
    """``recommended`` held to the bounds, and a warning kept on the safe side of ``critical``;
    each guard that acted is added to ``guards``."""
    low, high = bounds
    if low is not None and recommended < low:
        recommended = low
        guards.append(f"raised to the bound min {low:g}")
    if high is not None and recommended > high:
        recommended = high
        guards.append(f"lowered to the bound max {high:g}")
    if critical is not None:
        inside = critical * (1 - WARNING_INSIDE_CRITICAL) if model.direction == "above" else \
            critical * (1 + WARNING_INSIDE_CRITICAL)
        if (recommended > inside) if model.direction == "above" else (recommended < inside):
            recommended = inside
            guards.append(f"kept {WARNING_INSIDE_CRITICAL:.0%} inside critical {critical:g}")
    return recommended


def _cost(model: ThresholdModel, forecast: Forecast, level: float, target: float, current: float,
          strategy: Strategy) -> float:
    hourly = model.hourly_rates(level, forecast)
    rate = float(hourly.mean())
    reliability = abs(math.log((rate + target / 10) / (target * 1.1)))
    achievability = float(np.mean(hourly > HOUR_RATE_LIMIT * target))
    return reliability + ACHIEVABILITY_WEIGHT * achievability + strategy.stability_weight * abs(
        _log_ratio(level, current))


def _log_ratio(a: float, b: float) -> float:
    if a > 0 and b > 0:
        return math.log(a / b)
    return (a - b) / max(abs(b), 1e-12)


def backtest(model: ThresholdModel, level: float, consecutive: int, span_s: float = WEEK_S) -> dict:
    """What ``level`` would have done over the last ``span_s`` of the windows the model keeps every
    one of (``ThresholdModel.history``: 1.7 days of one-minute windows), exactly: its breach
    windows and its alert episodes (``consecutive`` windows in a row to start one, as many to end
    it, as a policy does), and the span it covers (``span_s``)."""
    ends, values = model.history()
    chosen = ends > ends[-1] - span_s if ends.size else ends.astype(bool)
    crossed = values[chosen] > level if model.direction == "above" else values[chosen] < level
    covered = float(ends[-1] - ends[chosen][0] + model.window_s) if chosen.any() else 0.0
    return {"windows": int(chosen.sum()), "breach_windows": int(crossed.sum()),
            "episodes": episodes(crossed, consecutive), "span_s": min(covered, span_s)}


def episodes(crossed: np.ndarray, consecutive: int) -> int:
    """Breach episodes of a level: entered after ``consecutive`` crossing windows in a row, left
    after as many that do not cross."""
    inside, streak, count = False, 0, 0
    for crossing in crossed.tolist():
        if crossing != inside:
            streak += 1
            if streak >= consecutive:
                inside, streak = crossing, 0
                count += inside
        else:
            streak = 0
    return count


def risk(choice: LevelChoice, model_confidence: float, span_s: float, target: float) -> tuple[str, list[str]]:
    """``low``, ``medium`` or ``high``, with the reasons."""
    reasons: list[tuple[int, str]] = []
    change = 0.0 if choice.current is None else abs(math.expm1(_log_ratio(choice.recommended, choice.current)))
    if change > 0.30:
        reasons.append((2, f"a change of {change:.0%}"))
    elif change > 0.15:
        reasons.append((1, f"a change of {change:.0%}"))
    if model_confidence < 0.4:
        reasons.append((2, f"confidence {model_confidence:.2f}"))
    elif model_confidence < 0.7:
        reasons.append((1, f"confidence {model_confidence:.2f}"))
    if choice.predicted_recommended.violation_rate > 2 * target:
        reasons.append((2, f"predicted violation rate {choice.predicted_recommended.violation_rate:.2%} is over "
                           f"twice the target {target:.2%}"))
    if span_s < FULL_CONFIDENCE_SPAN_S:
        reasons.append((1, f"{span_s / 86400:.1f} days of history"))
    worst = max((weight for weight, _ in reasons), default=0)
    return ("low", "medium", "high")[worst], [reason for _, reason in reasons]


def model_summary(model: ThresholdModel, start: float) -> dict:
    return {"version": MODEL_VERSION, "windows_seen": model.seen, "history_windows": len(model.history()[0]),
            "seasonality": model.baseline.estimate(start)[0], "alpha": model.alpha,
            "drift_at": None if math.isnan(model.drift_at) else model.drift_at}


INACCURATE_LOG_ERROR = math.log1p(0.15)
FLEET_FALSE_DISCOVERY = 0.05  # Benjamini-Hochberg's q over a partition's scores of the week
P_VALUES = {"beta_binomial": threshold_model.p_value, "log_t": compliance_model.p_value}


def score(predicted: dict, windows: int, crossed: int, predictive: dict | None = None) -> dict:
    """A prediction (``Prediction.as_dict``) against what its horizon did: ``crossed`` of
    ``windows`` (events) on the wrong side.

    - ``log_error``: ``|ln((predicted + c) / (actual + c))|``, ``c`` one window's share of the
      horizon: symmetric, and defined where nothing crossed (``relative_error``, ``|predicted -
      actual| / actual``, is kept beside it, null there);
    - ``p_value``: how surprising the actual is under the prediction's own predictive distribution
      (``predictive``, ``Prediction.predictive``; None without one). Whether a score is inaccurate
      is the fleet's decision (``benjamini_hochberg``)."""
    actual = crossed / windows if windows else math.nan
    rate = predicted["violation_rate"]
    covered = bool(windows) and predicted["ci_low"] <= actual <= predicted["ci_high"]
    relative = abs(rate - actual) / actual if actual else (0.0 if rate == 0 else math.inf)
    c = 1.0 / windows if windows else math.nan
    return {"predicted": rate, "ci_low": predicted["ci_low"], "ci_high": predicted["ci_high"], "actual": actual,
            "windows": windows, "breach_windows": crossed, "covered": covered,
            "relative_error": relative if math.isfinite(relative) else None,
            "log_error": abs(math.log((actual + c) / (rate + c))) if windows else None,
            "p_value": _p_value(predictive, windows, crossed), "inaccurate": False}


def _p_value(predictive: dict | None, windows: int, crossed: int) -> float | None:
    """``score``'s p-value: None without windows or a predictive distribution, or if it is not a
    number in [0, 1] (a distribution too degenerate to say)."""
    if not windows or not predictive:
        return None
    p = P_VALUES[predictive["kind"]](predictive, windows, crossed)
    return p if 0.0 <= p <= 1.0 else None


def _number(low: float):
    return lambda x: isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= low


_PREDICTIVE_FIELDS = {
    "beta_binomial": {"rates": lambda x: isinstance(x, list) and len(x) == len(threshold_model.LEVEL_NODES)
                      and all(_number(0.0)(r) and r <= 1 for r in x),
                      "inflation": _number(1.0), "history_windows": _number(0.0)},
    "log_t": {"log_centre": _number(-math.inf), "se": _number(0.0),
              "dof": lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1},
}


def valid_predictive(predictive: object) -> bool:
    """Whether a restored ``predictive`` (``Prediction.predictive``) is one ``score`` can read."""
    fields = _PREDICTIVE_FIELDS.get(predictive.get("kind")) if isinstance(predictive, dict) else None
    return fields is not None and all(check(predictive.get(name)) for name, check in fields.items())


def benjamini_hochberg(p_values: np.ndarray, q: float = FLEET_FALSE_DISCOVERY) -> float:
    """The largest p-value Benjamini-Hochberg rejects at false-discovery rate ``q`` (0: none)."""
    if not p_values.size:
        return 0.0
    rejected = p_values[stats.false_discovery_control(p_values) <= q]
    return float(rejected.max()) if rejected.size else 0.0

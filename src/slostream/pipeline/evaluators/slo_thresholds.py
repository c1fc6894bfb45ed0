"""Compliance models of threshold SLOs (``core.compliance_model``) and the thresholds they recommend.

Every SLO whose good events are judged by a threshold on the value (``value_le`` and the like,
above 0) gets one model, fed the value histogram of each closed report window of every series the
SLO reads. The SLO's series close their windows in an order that depends on how their records were
batched and on how far each partition had read (a live run, a replay and a backlog differ), so the
model takes a window, or a drift detection on one of the series, only once every series of the SLO
held here has closed past its end, then in one order: by window start, a start's detections (by
series key) before its windows (summed exactly, float64 sums of whole counts). So the model sees
one sequence however the series' closes interleave. A series more than ``FOLD_AFTER_S`` behind the
SLO's furthest one is not waited for (one that stopped while a backlog is read: its clock runs on
at wall speed only); its windows come late to the model, which adds them to their learned hours.
The model learns whole hours (``ComplianceModel.update``); everything here happens at the end of
an hour it learns.

The threshold is recommended as a policy's levels are (``evaluators.thresholds``): on a schedule
(``recommend_every_s`` after the model's first hour), after a drift detection on one of the SLO's
series whose change has lasted six hours (``ComplianceModel.lasting``), and on demand (the control
command ``{"command": "recommend", "slo": ...}``). Its target is the strategy's
``slo_budget_burn`` times the SLO's error budget: the share of bad events that would spend, say,
70% of the budget (balanced), so the SLO keeps a margin. Nothing is made on schedule while a drift
is settling (detected less than six hours before) or while an incident runs (``unusual``: the
newest hour's bad share over twice what the model expects, significantly), unless a change has
lasted: its hours look like an incident to the weekly model until it has learned them.

Each recommendation is scored once its horizon has passed: the bad events of the current and the
recommended threshold among the horizon's events, counted exactly (to the sketches' accuracy) as
its hours are learned."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import orjson

from slostream.core.closed import Closed
from slostream.core.compliance_model import BIN_WIDTH, FOLD_AFTER_S, MODEL_VERSION, ComplianceModel
from slostream.core.objectives import Slo
from slostream.core.recommend import LevelChoice, choose, confidence, ready, risk, score
from slostream.core.threshold_model import LASTING_AFTER_S
from slostream.pipeline.alerting import Alerting
from slostream.pipeline.envelopes import recommendation_event
from slostream.pipeline.evaluators import Closes
from slostream.pipeline.evaluators.thresholds import PolicyModel, RecommendingEvaluator
from slostream.pipeline.series import Series
from slostream.pipeline.state_keys import slo_model_key
from slostream.pipeline.types import Output, PipelineConfig

STATE_VERSION = 2  # 2: the windows and detections waiting for the SLO's other series (1 had none)
LEVEL = "threshold"


def modelled(slo: Slo) -> bool:
    """Whether an SLO gets a compliance model: its good events are a positive threshold's."""
    return slo.good.kind != "ok" and slo.good.threshold is not None and slo.good.threshold > 0


class SloModel(PolicyModel):
    """The model of one threshold SLO, and its recommendation schedule and history."""

    __slots__ = ("waiting", "detections")

    def __init__(self, model: ComplianceModel):
        super().__init__(model)
        self.changes = {LEVEL: []}
        # Taken from closes, not yet given to the model: by window start, the sum of the windows'
        # value histograms and how many windows; and drift detections as (the start of the window
        # that made it, its series' key, the change's start).
        self.waiting: dict[float, tuple[np.ndarray, int]] = {}
        self.detections: list[tuple[float, str, float]] = []

    @staticmethod
    def counters() -> dict:
        """What a pending recommendation counts over its horizon: events, and those judged bad."""
        return {"events": 0.0, "bad": {"current": 0.0, "recommended": 0.0}}

    def count_hour(self, end: float, counts) -> list[dict]:
        """Count a learned hour into the recommendations whose horizon holds it; those whose horizon
        it ends, taken out."""
        model: ComplianceModel = self.model
        for pending in self.pending:
            if pending["made_at"] < end <= pending["until"]:
                pending["events"] += float(counts.sum())
                for which, level in pending["levels"].items():
                    pending["bad"][which] += float(model.bad_of(level, counts[None])[0])
        done = [p for p in self.pending if end >= p["until"]]
        if done:
            self.pending = [p for p in self.pending if end < p["until"]]
        return done

    def take(self, horizon: float, window_s: int) -> list[tuple[float, list[float], np.ndarray | None, int]]:
        """What waits for windows ending at or before ``horizon``, taken out, in the order the model
        gets it: by window start, each start's detections (their changes' starts, by series key),
        then the sum of its windows' histograms (None: none) and how many."""
        starts = sorted(start for start in {*self.waiting, *(d[0] for d in self.detections)}
                        if start + window_s <= horizon)
        if not starts:
            return []
        detected: dict[float, list[float]] = {}
        for start, _, changed_at in sorted(d for d in self.detections if d[0] + window_s <= horizon):
            detected.setdefault(start, []).append(changed_at)
        self.detections = [d for d in self.detections if d[0] + window_s > horizon]
        taken = []
        for start in starts:
            counts, windows = self.waiting.pop(start, (None, 0))
            taken.append((start, detected.get(start, []), counts, windows))
        return taken

    def learn_score(self, scores: dict[str, dict]) -> None:
        """As ``PolicyModel.learn_score``, and the compliance model's intervals recalibrated by each
        (adaptive conformal inference on the scored horizons)."""
        for scored in scores.values():
            if scored is not None:
                self.model.recalibrate(scored["covered"])
        super().learn_score(scores)

    @classmethod
    def restore(cls, state: dict, waiting: dict) -> SloModel:
        held = cls(ComplianceModel.from_state(state["model"]))
        held.restore_schedule(state, state["report"])
        held.waiting = {start: (np.array(counts), windows) for start, windows, counts in waiting.get("windows", [])}
        held.detections = [tuple(detection) for detection in waiting.get("detections", [])]
        return held

    def to_state(self) -> dict:
        return {**super().to_state(), "report": {"latest": self.latest, "scored": self.scored}}

    def waiting_state(self) -> dict:
        return {"windows": [[start, windows, counts.tolist()]
                            for start, (counts, windows) in sorted(self.waiting.items())],
                "detections": sorted(self.detections)}


class SloThresholdEvaluator(RecommendingEvaluator):
    kind = "slo_thresholds"

    def __init__(self, config: PipelineConfig, alerting: Alerting):
        super().__init__(config, alerting)
        self.window_s = config.report_window_s
        self.slos_for: dict[tuple[str, str], list[Slo]] = {}
        for slo in config.slos:
            if self.enabled and modelled(slo):
                self.slos_for.setdefault((slo.service, slo.metric), []).append(slo)
        self.slo_named = {slo.name: slo for slos in self.slos_for.values() for slo in slos}
        self.models: dict[str, SloModel] = {}
        self.members: dict[str, dict[str, Series]] = {}  # each model's series held here, by key
        self._changed: set[str] = set()  # models to write at the next checkpoint

    def watch(self, series: Series) -> None:
        for slo in self.slos_for.get(series.group, ()):
            if slo.name not in self.models:
                self.models[slo.name] = SloModel(ComplianceModel(
                    slo.good.threshold, slo.good.kind in ("value_le", "value_lt"), slo.objective))
            self.members.setdefault(slo.name, {})[series.key] = series

    def release(self, series: Series) -> None:
        for slo in self.slos_for.get(series.group, ()):
            self.members.get(slo.name, {}).pop(series.key, None)

    def window_lengths(self, group: tuple[str, str]) -> dict[int, bool]:
        return {self.window_s: True} if group in self.slos_for else {}

    def closed(self, closes: Closes, out: Output) -> None:
        touched: set[str] = set()
        for i in closes.moved:
            series = closes.series[i]
            slos = self.slos_for.get(series.group)
            if slos:
                self._hold(series, slos, closes.closed)
                touched.update(slo.name for slo in slos)
        for name in sorted(touched):
            self._learn(self.slo_named[name], out)

    def _hold(self, series: Series, slos: list[Slo], closed: Closed) -> None:
        """The series' windows and drift detections of this close, waiting for the SLO's other series."""
        mine = closed.rows_of(series.windows.owner)
        chosen = mine[closed.lengths[mine] == self.window_s].tolist()
        detections = series.drift.recent if series.drift is not None else []
        for slo in slos:
            held = self.models[slo.name]
            held.detections += [(detection.detected_at - self.window_s, series.key, detection.changed_at)
                                for _, detection in detections]
            for j in chosen:
                counts = closed.value_histogram(j, held.model.edges)
                if float(counts.sum()) > 0:
                    start = float(closed.starts[j])
                    summed, windows = held.waiting.get(start, (0.0, 0))
                    held.waiting[start] = (summed + counts, windows + 1)
            if chosen or detections:
                self._changed.add(slo.name)

    def _learn(self, slo: Slo, out: Output) -> None:
        """What every series of the SLO has closed (or all but those over ``FOLD_AFTER_S`` behind),
        to the model."""
        held = self.models[slo.name]
        closed_until = [series.windows.closed_until for series in self.members[slo.name].values()]
        horizon = max(min(closed_until), max(closed_until) - FOLD_AFTER_S)
        for start, changes, counts, windows in held.take(horizon, self.window_s):
            for changed_at in changes:
                held.after_drift = changed_at
                held.model.change_detected()
            if counts is not None:
                for end, hour in held.model.update(start, counts, windows):
                    self._hour(slo, held, end, hour, out)
            self._changed.add(slo.name)

    def _hour(self, slo: Slo, held: SloModel, end: float, counts, out: Output) -> None:
        """An hour learned, ending at ``end``: scores due, and a recommendation if one is."""
        for pending in held.count_hour(end, counts):
            self._score(slo, held, pending, end, out)
        if math.isnan(held.due_at):
            held.due_at = end + self.every_s
        scheduled = end >= held.due_at
        drifted = end - held.after_drift >= LASTING_AFTER_S  # False while NaN
        if not (scheduled or drifted):
            return
        # A change that lasted is no incident, though its hours look like one to the weekly model
        # until it has learned them: only without one does an incident hold a recommendation back.
        lasted = drifted and held.model.lasting(held.after_drift)
        in_progress = None if lasted else _in_progress(held, end)
        if in_progress is not None:
            if scheduled:
                held.hold(end, in_progress)
            return
        if lasted:
            held.model.drifted(held.after_drift)
        held.after_drift = math.nan
        made = (scheduled or lasted) and self._recommend(slo, held, end, "schedule" if scheduled else "drift", out)
        if scheduled and made:  # one due before the model is ready is made at the first hour it is
            held.due_at, held.held = end + self.every_s, None

    def recommend_now(self, slo_name: str, trigger: str, out: Output) -> int:
        """The control command ``recommend`` of an SLO: at the end of the newest hour learned."""
        held = self.models.get(slo_name)
        slo = self.slo_named.get(slo_name)
        if held is None or slo is None or math.isnan(held.model.newest_end):
            return 0
        made = self._recommend(slo, held, held.model.newest_end, trigger, out)
        self._changed.add(slo_name)
        return made

    def _recommend(self, slo: Slo, held: SloModel, at: float, trigger: str, out: Output) -> bool:
        model, strategy = held.model, self.strategy
        if ready(model, strategy, self.window_s) is not None:
            return False
        forecast = model.forecast(at, self.horizon_s)
        target = strategy.slo_budget_burn * (1 - slo.objective)
        exact = model.level_for(target, forecast)
        model_confidence = confidence(model, forecast, target, exact)
        choice = choose(model, forecast, LEVEL, slo.good.threshold, target, exact, strategy, model_confidence,
                        held.changes[LEVEL], (float(model.edges[0]), float(model.edges[-1])), None)
        choice = _on_an_edge(model, forecast, choice)
        data = self._data(slo, held, choice, at, trigger, target, model_confidence, _in_progress(held, at))
        out.recommendations.append(recommendation_event(self.source, slo.service, slo.name, data))
        held.made(choice, data, trigger, self.horizon_s)
        return True

    def _data(self, slo: Slo, held: SloModel, choice: LevelChoice, at: float, trigger: str, target: float,
              model_confidence: float, in_progress: str | None) -> dict:
        model, strategy = held.model, self.strategy
        risk_level, reasons = risk(choice, model_confidence, model.span_s, target)
        if in_progress is not None:
            risk_level, reasons = "high", [*reasons, f"made while {in_progress}"]
        now_bt, new_bt = model.backtest(choice.current), model.backtest(choice.recommended)
        now, new = choice.predicted_current, choice.predicted_recommended
        symbol = slo.good.describe().split()[0]
        rationale = (
            f"Over the last {now_bt['days']} days, {slo.name} ({slo.service} {slo.metric} good when {symbol} "
            f"{choice.current:g}) met {now_bt['compliance']:.3%} against an objective of {slo.objective:.3%} "
            f"(budget burn {now_bt['budget_burn']:.2f}); good when {symbol} {choice.recommended:g} it would have "
            f"met {new_bt['compliance']:.3%} (burn {new_bt['budget_burn']:.2f}). For the next "
            f"{self.horizon_s / 86400:g} days the model predicts a compliance of {now.compliance:.3%} "
            f"[{1 - now.ci_high:.3%}, {1 - now.ci_low:.3%}] at the current threshold and {new.compliance:.3%} "
            f"[{1 - new.ci_high:.3%}, {1 - new.ci_low:.3%}] at the recommended one, against a target burn of "
            f"{strategy.slo_budget_burn:g} ({1 - target:.3%}).")
        return {
            "target": {"kind": "slo", "name": slo.name, "level": LEVEL},
            "service": slo.service, "metric": slo.metric, "labels": dict(slo.labels),
            "aggregate": slo.good.kind, "direction": model.direction, "objective": slo.objective,
            "made_at": at, "trigger": trigger, "status": choice.status,
            "current": choice.current, "recommended": choice.recommended, "horizon_s": self.horizon_s,
            "predicted": {"current": now.as_dict(), "recommended": new.as_dict()},
            "backtest": {"span_s": 7 * 86400, "current": now_bt, "recommended": new_bt},
            "confidence": model_confidence,
            "risk": {"level": risk_level, "reasons": reasons},
            "rationale": rationale,
            "rollback_criteria": [
                f"the SLO's budget burn over 24 h at {choice.recommended:g} is above "
                f"{max(2.0, 1.5 * new.ci_high / (1 - slo.objective)):.2f}",
                f"compliance over 24 h at {choice.recommended:g} is below {1 - max(2 * target, new.ci_high):.3%}",
                "a drift is detected on one of the SLO's series",
            ],
            "guards": list(choice.guards),
            "strategy": strategy.as_dict(),
            "model": {"version": MODEL_VERSION, "windows_seen": model.seen, "seasonality": model.seasonality(),
                      "alpha": model.alpha, "drift_at": None if math.isnan(model.drift_at) else model.drift_at},
        }

    def _score(self, slo: Slo, held: SloModel, pending: dict, end: float, out: Output) -> None:
        events = round(pending["events"])
        scores = {which: score(pending["predicted"][which], events, round(pending["bad"][which]),
                               pending.get("predictive", {}).get(which))
                  for which in ("current", "recommended")}
        for which in ("current", "recommended"):
            scored = scores[which]
            scored["events"], scored["bad_events"] = scored.pop("windows"), scored.pop("breach_windows")
        about = {"target": {"kind": "slo", "name": slo.name, "level": LEVEL},
                 "service": slo.service, "metric": slo.metric, "labels": dict(slo.labels)}
        labels = {**slo.labels, "service": slo.service, "metric": slo.metric, "slo": slo.name, "level": LEVEL}
        self._publish_score(held, pending, scores, end, about, slo.name, labels, f"the threshold of SLO {slo.name}",
                            out)

    def status(self, series: Iterable[Series]) -> list[dict]:
        return [{**data, "last_score": held.scored.get(LEVEL), "accuracy": held.accuracy, "held": held.held}
                for _, held in sorted(self.models.items()) for data in held.latest.values()]

    def writes(self, partition: int) -> Iterable[tuple[str, bytes]]:
        changed, self._changed = self._changed, set()
        for name in sorted(changed):
            held = self.models[name]
            yield slo_model_key(partition, name), orjson.dumps({"v": STATE_VERSION, "model": held.to_state(),
                                                                "waiting": held.waiting_state()})

    def restore(self, saved: dict[str, bytes]) -> set[str]:
        """The models of the threshold SLOs configured now, from their saved state; one whose
        threshold, rule or objective changed starts afresh. The names of those restored."""
        for name, raw in saved.items():
            slo = self.slo_named.get(name)
            if slo is None:  # no longer modelled: its key is deleted (``state``)
                continue
            state = orjson.loads(raw)
            if state.get("v") not in (1, STATE_VERSION):
                raise ValueError(f"unsupported SLO model state version {state.get('v')!r} (this version reads "
                                 f"1 and {STATE_VERSION})")
            held = SloModel.restore(state["model"], state.get("waiting", {}))
            model = held.model
            if (model.threshold, model.good_below, model.objective) == (
                    slo.good.threshold, slo.good.kind in ("value_le", "value_lt"), slo.objective):
                self.models[name] = held
                self._recall(name, held)
        return set(self.models)


def _on_an_edge(model: ComplianceModel, forecast, choice: LevelChoice) -> LevelChoice:
    """The choice moved to the model's nearest bin edge on the current threshold's side (the current
    threshold is an edge), so its backtest and scores are exact counts: thresholds move in steps of
    about 10%, and never further than the strategy allows."""
    now, new = model.position(choice.current), model.position(choice.recommended)
    edge = math.floor(new + 1e-9) if new > now else math.ceil(new - 1e-9)
    if edge == round(now):
        status = choice.status if choice.status == "withheld" else "unchanged"
        return dataclasses.replace(choice, recommended=choice.current, status=status,
                                   predicted_recommended=choice.predicted_current)
    level = float(model.edges[edge])
    guards = choice.guards if level == choice.recommended else (
        *choice.guards, f"moved to {level:g} on the model's {BIN_WIDTH:.0%} grid (exact backtests and scores)")
    return dataclasses.replace(choice, recommended=level, guards=guards,
                               predicted_recommended=model.predict(level, forecast))


def _in_progress(held: SloModel, at: float) -> str | None:
    if at - held.after_drift < LASTING_AFTER_S:
        return "a drift detected on one of its series settles"
    if held.model.unusual():
        return "an incident: the newest hour's bad share is over twice what the model expects, significantly"
    return None

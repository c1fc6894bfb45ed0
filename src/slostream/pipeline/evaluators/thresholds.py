"""Threshold models of policies (``core.threshold_model``) and the levels they recommend
(``core.recommend``).

Every policy's aggregate on every series it watches gets a model, fed each closed policy window in
event time, and so does every entry of ``models:`` (a policy without levels: its recommendations
are the levels that would meet the strategy's targets, ``current`` null, status ``new``). A
policy's warning and critical levels are recommended:

- on a schedule: every ``recommend_every_s`` of event time after the model's first window;
- after a drift detection on the series, six hours on, if the change has lasted
  (``ThresholdModel.lasting``: an incident that has ended is no reason);
- on demand: the control command ``{"command": "recommend", "policy": ...}``.

Once its horizon has passed, each recommendation is scored: the predicted violation rates of the
current level (which ran) and of the recommended one (in shadow) against the share of the
horizon's windows that crossed each, counted exactly as the windows close. Each score is a
``slostream.recommendation.scored`` event with its log error and p-value (``core.recommend.score``).
One off by more than 15% and significant among the partition's scores of the week
(Benjamini-Hochberg at a false-discovery rate of 5%, ``RecommendingEvaluator._judge``) is
inaccurate: it fires ``ThresholdModelInaccurate`` (ticket) until a later score of that level is
accurate. (The threshold model recalibrates its intervals itself, on rolling one-day checks.)

A scheduled one is made at the first window the model is ready (``core.recommend.ready``) after
it is due, unless it is **held**: none is made on schedule or after a drift while a change or an
incident is in progress on the series: a drift detection still in its cooldown
(``SeriesDrift.settling``), or an incident by the model's own measure (``ThresholdModel.unusual``:
its newest windows all beyond what it expects at their hours 99% of the time). The held one (its
due time, since when and why) is in the JSON API's status, and it is tried again at every window.
Not the policy's level: a policy kept at warning by a level set too tight is what a
recommendation is for. One asked for is made at once, with the reason among its risks."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import orjson

from slostream.core.alerts import Condition
from slostream.core.closed import Closed
from slostream.core.objectives import Policy
from slostream.core.policy import aggregate_value
from slostream.core.recommend import (
    INACCURATE_LOG_ERROR,
    STRATEGIES,
    LevelChoice,
    backtest,
    benjamini_hochberg,
    choose,
    confidence,
    first_level,
    model_summary,
    ready,
    risk,
    score,
    valid_predictive,
)
from slostream.core.threshold_model import LASTING_AFTER_S, Fit, ThresholdModel
from slostream.pipeline import state_keys
from slostream.pipeline.alerting import Alerting
from slostream.pipeline.envelopes import recommendation_event, scored_event
from slostream.pipeline.evaluators import Closes, Evaluator
from slostream.pipeline.series import Series
from slostream.pipeline.types import Output, PipelineConfig

STATE_VERSION = 1
LEVELS = ("critical", "warning")  # critical first: the warning is kept inside the recommended critical
PAST_CHANGES = 3
MAX_PENDING = 64  # recommendations awaiting their score, per model: the oldest beyond are dropped
ACCURACY_SMOOTHING = 0.2  # weight of the newest score in the running mean relative error
INACCURATE_ALERT = "ThresholdModelInaccurate"


class PolicyModel:
    """The model of one policy on one series, and its recommendation schedule and history."""

    __slots__ = ("model", "due_at", "after_drift", "changes", "latest", "pending", "accuracy", "scored", "held")

    def __init__(self, model: ThresholdModel):
        self.model = model
        self.due_at = math.nan  # event time of the next scheduled recommendation
        self.after_drift = math.nan  # the start of a detected change, until it has settled
        self.changes: dict[str, list[float]] = {level: [] for level in LEVELS}  # log-ratios, newest last
        self.latest: dict[str, dict] = {}  # the newest recommendation's data, by level
        self.pending: list[dict] = []  # recommendations awaiting their score, with their counts so far
        self.accuracy = {"scored": 0, "covered": 0, "mean_relative_error": None, "mean_log_error": None}
        self.scored: dict[str, dict] = {}  # the newest score's data, by level
        # A scheduled recommendation held back: {"due_at", "since", "until", "reason"}; None: none.
        self.held: dict | None = None

    def hold(self, at: float, reason: str) -> None:
        """The scheduled recommendation, due, is held at event time ``at`` for ``reason``."""
        if self.held is None or self.held["reason"] != reason:
            self.held = {"due_at": self.due_at, "since": at, "until": at, "reason": reason}
        self.held["until"] = at

    def made(self, choice: LevelChoice, data: dict, trigger: str, horizon_s: float) -> None:
        """A recommendation of ``choice.level`` was made (its event's ``data``): kept as the newest,
        its change among the past ones, and awaiting its score."""
        level, at = choice.level, data["made_at"]
        if choice.status == "changed":
            self.changes[level] = [*self.changes[level], math.log(choice.recommended / choice.current)
                                   if choice.recommended > 0 and choice.current > 0 else 0.0][-PAST_CHANGES:]
        self.latest[level] = data
        self.pending = [*self.pending, {
            "level": level, "made_at": at, "until": at + horizon_s, "trigger": trigger,
            "levels": {"current": choice.current, "recommended": choice.recommended},
            "predicted": data["predicted"],
            "predictive": {"current": getattr(choice.predicted_current, "predictive", None),
                           "recommended": choice.predicted_recommended.predictive}, **self.counters()},
        ][-MAX_PENDING:]

    @staticmethod
    def counters() -> dict:
        """What a pending recommendation counts over its horizon: windows, and those crossing."""
        return {"windows": 0, "crossed": {"current": 0, "recommended": 0}}

    def count(self, end: float, value: float | None, direction: str) -> list[dict]:
        """Count a closed window into the recommendations whose horizon holds it; those whose
        horizon it ends, taken out."""
        if value is None or not math.isfinite(value):
            return []
        for pending in self.pending:
            if pending["made_at"] < end <= pending["until"]:
                pending["windows"] += 1
                for which, level in pending["levels"].items():
                    if level is not None:
                        pending["crossed"][which] += value > level if direction == "above" else value < level
        done = [p for p in self.pending if end >= p["until"]]
        if done:
            self.pending = [p for p in self.pending if end < p["until"]]
        return done

    def to_state(self) -> dict:
        """What changes with every window, written with the series; the history's chunks and the
        newest recommendations and scores have keys of their own (``ThresholdEvaluator.writes``)."""
        return {"model": self.model.to_state(), "due_at": None if math.isnan(self.due_at) else self.due_at,
                "after_drift": None if math.isnan(self.after_drift) else self.after_drift, "changes": self.changes,
                "pending": self.pending, "accuracy": self.accuracy, "held": self.held}

    def learn_score(self, scores: dict[str, dict]) -> None:
        """A score of both levels (``core.recommend.score``): the running accuracy moved. (The
        threshold model recalibrates its intervals on its own one-day checks.)"""
        accuracy = self.accuracy
        for which in ("current", "recommended"):
            if scores[which] is None:  # no current level (``models:``)
                continue
            accuracy["scored"] += 1
            accuracy["covered"] += scores[which]["covered"]
            for error, mean in (("relative_error", "mean_relative_error"), ("log_error", "mean_log_error")):
                if scores[which][error] is not None:
                    previous = accuracy.get(mean)
                    accuracy[mean] = scores[which][error] if previous is None else (
                        (1 - ACCURACY_SMOOTHING) * previous + ACCURACY_SMOOTHING * scores[which][error])

    @classmethod
    def from_state(cls, state: dict, chunks: dict[int, bytes], report: dict | None) -> PolicyModel:
        held = cls(ThresholdModel.from_state(state["model"], chunks))
        held.restore_schedule(state, report)
        return held

    def restore_schedule(self, state: dict, report: dict | None) -> None:
        """What ``to_state`` and the report keep besides the model."""
        held = self
        held.due_at = math.nan if state["due_at"] is None else state["due_at"]
        held.after_drift = math.nan if state["after_drift"] is None else state["after_drift"]
        held.changes = state["changes"]
        held.pending, held.accuracy = state["pending"], {"mean_log_error": None, **state["accuracy"]}
        for pending in held.pending:
            for predictive in pending.get("predictive", {}).values():
                if predictive is not None and not valid_predictive(predictive):
                    raise ValueError(f"a pending recommendation's predictive distribution is not one: {predictive!r}")
        held.held = state.get("held")
        if report is not None:
            held.latest, held.scored = report["latest"], report["scored"]


class RecommendingEvaluator(Evaluator):
    """What the evaluators that recommend levels share: their settings, and publishing a score."""

    def __init__(self, config: PipelineConfig, alerting: Alerting):
        self.enabled = config.threshold_models
        self.strategy = STRATEGIES[config.recommend_strategy]
        self.every_s = config.recommend_every_s
        self.horizon_s = config.recommend_horizon_s
        self.source = config.source
        self.alerting = alerting
        # The newest score's p-value of every model of the partition, by (subject, target, level, which).
        self._newest_p: dict[tuple[str, str, str, str], float] = {}

    def _publish_score(self, held: PolicyModel, pending: dict, scores: dict, end: float, about: dict, subject: str,
                       alert_labels: dict[str, str], what: str, out: Output) -> None:
        """A recommendation's ``scores`` (None for a level it did not have): judged against the
        week's (``_judge``), learned by the model, the ``slostream.recommendation.scored`` event
        (``about``: its target, service, metric and labels) sent, and ``ThresholdModelInaccurate``
        of the target (``alert_labels``) evaluated."""
        self._judge(subject, about["target"], scores, end)
        held.learn_score(scores)
        data = {**about, "made_at": pending["made_at"], "scored_at": end,
                "horizon_s": pending["until"] - pending["made_at"], "trigger": pending["trigger"],
                "levels": pending["levels"], **scores, "accuracy": dict(held.accuracy)}
        out.recommendations.append(scored_event(self.source, about["service"], subject, data))
        held.scored[pending["level"]] = data
        inaccurate = [which for which in ("current", "recommended") if scores[which] and scores[which]["inaccurate"]]
        self.alerting.evaluate(end, [inaccurate_condition(alert_labels, what, data, inaccurate)], out)

    def _judge(self, subject: str, target: dict, scores: dict, end: float) -> None:
        """Whether each score is inaccurate: off by more than 15% (log error) and significant among
        the newest scores of every model of the partition (a week's, on the weekly schedule),
        itself included, by Benjamini-Hochberg at a false-discovery rate of 5%. Judged one by one
        at 5%, one in twenty of a thousand models that all predict well would be flagged every
        week. (The newest of each model, not those of a span of event time: one series' clock far
        ahead would have emptied the span for all.)"""
        for which, scored in scores.items():
            if scored is not None and scored["p_value"] is not None:
                self._newest_p[subject, target["name"], target["level"], which] = scored["p_value"]
        cutoff = benjamini_hochberg(np.array(list(self._newest_p.values())))
        for scored in scores.values():
            if scored is not None and scored["p_value"] is not None:
                scored["inaccurate"] = scored["p_value"] <= cutoff and scored["log_error"] > INACCURATE_LOG_ERROR

    def _recall(self, subject: str, held: PolicyModel) -> None:
        """A restored model's newest scores, back among those judged together (``_judge``); a p-value
        that is not one (a damaged record) is left out."""
        for data in held.scored.values():
            for which in ("current", "recommended"):
                p = (data.get(which) or {}).get("p_value")
                if isinstance(p, float | int) and 0 <= p <= 1:
                    self._newest_p[subject, data["target"]["name"], data["target"]["level"], which] = float(p)

    def _forget_scores(self, subject: str) -> None:
        """A released series' models are judged no more."""
        self._newest_p = {key: p for key, p in self._newest_p.items() if key[0] != subject}


class ThresholdEvaluator(RecommendingEvaluator):
    kind = "thresholds"

    def __init__(self, config: PipelineConfig, alerting: Alerting):
        super().__init__(config, alerting)
        self.policies_for: dict[tuple[str, str], list[Policy]] = {}
        for policy in (*config.policies, *config.models):
            self.policies_for.setdefault((policy.service, policy.metric), []).append(policy)
        self.models_only = {model.name for model in config.models}
        # Writes for the next checkpoint, by (kind, policy, chunk's first window, series key); None
        # deletes the key.
        self._writes: dict[tuple[str, str, int, str], bytes | None] = {}
        # Read at a restore, until each series takes its own: (series key, policy) -> chunks, report.
        self._restored_chunks: dict[tuple[str, str], dict[int, bytes]] = {}
        self._restored_reports: dict[tuple[str, str], dict] = {}

    def window_lengths(self, group: tuple[str, str]) -> dict[int, bool]:
        """A ``models:`` entry's windows (a policy's are the policy evaluator's)."""
        lengths: dict[int, bool] = {}
        for policy in self.policies_for.get(group, ()) if self.enabled else ():
            if policy.name in self.models_only:
                lengths[policy.window_s] = lengths.get(policy.window_s, False) or policy.aggregate.startswith("p")
        return lengths

    def watch(self, series: Series) -> None:
        policies = self.policies_for.get(series.group, ()) if self.enabled else ()
        series.models = {p.name: PolicyModel(ThresholdModel(p.direction, p.window_s)) for p in policies} or None

    def closed(self, closes: Closes, out: Output) -> None:
        for i in closes.moved:
            series = closes.series[i]
            if series.models:
                self._learn(series, closes.closed, out)

    def _learn(self, series: Series, closed: Closed, out: Output) -> None:
        mine = closed.rows_of(series.windows.owner)
        detections = series.drift.recent if series.drift is not None else []
        for policy in self.policies_for[series.group]:
            held = series.models[policy.name]
            for _, detection in detections:
                held.after_drift = detection.changed_at
            chosen = mine[closed.lengths[mine] == policy.window_s]
            for j in chosen[np.argsort(closed.starts[chosen], kind="stable")].tolist():
                aggregate = closed.aggregate(j)
                end = int(closed.starts[j] + closed.lengths[j])
                value = aggregate_value(aggregate, policy.aggregate) if aggregate.count else None
                held.model.update(end, value)
                for key in held.model.completed_chunks():
                    self._writes[state_keys.MODEL_CHUNK, policy.name, key, series.key] = held.model.chunk(key)
                self._forget_chunks(series.key, policy.name, held.model.expired_chunks())
                for pending in held.count(end, value, policy.direction):
                    self._score(series, policy, held, pending, end, out)
                if math.isnan(held.due_at):
                    held.due_at = end + self.every_s
                scheduled = end >= held.due_at
                drifted = end - held.after_drift >= LASTING_AFTER_S  # False while NaN: no change pending
                if scheduled or drifted:
                    self._consider(series, policy, held, end, scheduled, drifted, out)

    def _consider(self, series: Series, policy: Policy, held: PolicyModel, end: float, scheduled: bool,
                  drifted: bool, out: Output) -> None:
        """A recommendation is due, or a change pending: made unless something is in progress (then
        the due one is held, and tried again at the next window). One due before the model is
        ready is made at the first window it is."""
        if not drifted and ready(held.model, self.strategy, policy.window_s) is not None:
            return
        fit = held.model.fit()
        in_progress = _in_progress(series, held, end, fit)
        if in_progress is not None:
            if scheduled:
                held.hold(end, in_progress)
            return
        lasted = drifted and held.model.lasting(held.after_drift, fit)
        if lasted:
            held.model.drifted(held.after_drift)
            fit = held.model.fit()  # the weights moved
        held.after_drift = math.nan
        made = (scheduled or lasted) and self._recommend(
            series, policy, held, end, "schedule" if scheduled else "drift", fit, out)
        if scheduled and made:
            held.due_at, held.held = end + self.every_s, None

    def recommend_now(self, series: Iterable[Series], policy_name: str, trigger: str, out: Output) -> int:
        """The control command ``recommend``: every series of the policy recommends at once, at the
        end of its newest closed window, in progress or not; how many did."""
        made = 0
        for one in series:
            held = (one.models or {}).get(policy_name)
            if held is not None and held.model.seen:
                policy = next(p for p in self.policies_for[one.group] if p.name == policy_name)
                at = float(held.model.history()[0][-1])
                made += self._recommend(one, policy, held, at, trigger, held.model.fit(), out)
        return made

    def _recommend(self, series: Series, policy: Policy, held: PolicyModel, at: float, trigger: str,
                   fit: Fit | None, out: Output) -> bool:
        """Both levels' recommendations at event time ``at``, from the model's ``fit``."""
        model, strategy = held.model, self.strategy
        if ready(model, strategy, policy.window_s) is not None:
            return False
        forecast = model.forecast(at, self.horizon_s, fit)
        in_progress = _in_progress(series, held, at, fit)
        critical = None
        model_only = policy.name in self.models_only
        for level in LEVELS:
            current = getattr(policy, level)
            if current is None and not model_only:
                continue
            target = strategy.rate(level)
            exact = model.level_for(target, forecast)
            model_confidence = confidence(model, forecast, target, exact)
            bounds, inside = (policy.min_level, policy.max_level), critical if level == "warning" else None
            choice = first_level(model, forecast, level, exact, bounds, inside) if model_only else choose(
                model, forecast, level, current, target, exact, strategy, model_confidence, held.changes[level],
                bounds, inside)
            if level == "critical":
                critical = choice.recommended
            data = self._data(series, policy, held, choice, at, trigger, model_confidence, in_progress)
            out.recommendations.append(recommendation_event(self.source, series.service, series.key, data))
            held.made(choice, data, trigger, self.horizon_s)
        self._report_changed(series, policy.name, held)
        return True

    def _report_changed(self, series: Series, policy: str, held: PolicyModel) -> None:
        """Its newest recommendation or score changed: written at the next checkpoint, with the
        series (whose state moved with it)."""
        self._writes[state_keys.MODEL_REPORT, policy, 0, series.key] = orjson.dumps(
            {"v": STATE_VERSION, "latest": held.latest, "scored": held.scored})
        store, owner = series.windows.store, series.windows.owner
        store.changed[owner] = store.emitted[owner] = True

    def _score(self, series: Series, policy: Policy, held: PolicyModel, pending: dict, end: float,
               out: Output) -> None:
        """A recommendation whose horizon ``end`` closed: its score event, the model recalibrated,
        and the inaccuracy alert of its level judged."""
        scores = {which: None if pending["levels"][which] is None else score(
                  pending["predicted"][which], pending["windows"], pending["crossed"][which],
                  pending.get("predictive", {}).get(which))
                  for which in ("current", "recommended")}
        level = pending["level"]
        about = {"target": {"kind": self._kind(policy), "name": policy.name, "level": level},
                 "service": series.service, "metric": series.metric, "labels": series.labels}
        self._publish_score(held, pending, scores, end, about, series.key, _target_labels(series, policy.name, level),
                            f"{policy.name} {level} on {series.service}", out)
        self._report_changed(series, policy.name, held)

    def _data(self, series: Series, policy: Policy, held: PolicyModel, choice: LevelChoice, at: float, trigger: str,
              model_confidence: float, in_progress: str | None) -> dict:
        model, strategy = held.model, self.strategy
        target = strategy.rate(choice.level)
        risk_level, reasons = risk(choice, model_confidence, model.span_s, target)
        if in_progress is not None:
            risk_level, reasons = "high", [*reasons, f"made while {in_progress}"]
        new_bt = backtest(model, choice.recommended, policy.consecutive)
        predicted_new = choice.predicted_recommended
        days = self.horizon_s / 86400
        if choice.current is None:
            return self._first_data(series, policy, held, choice, at, trigger, model_confidence, new_bt,
                                    risk_level, reasons)
        now_bt = backtest(model, choice.current, policy.consecutive)
        predicted_now = choice.predicted_current
        rationale = (
            f"Over the last {now_bt['windows']} windows ({model.span_s / 86400:.1f} days learned, the last "
            f"{now_bt['span_s'] / 86400:.1f} days "
            f"backtested) the {policy.aggregate} of {series.service} {series.metric} crossed {choice.current:g} in "
            f"{now_bt['breach_windows']} windows ({now_bt['episodes']} alert episodes); {choice.recommended:g} would "
            f"have been crossed in {new_bt['breach_windows']} ({new_bt['episodes']} episodes). For the next "
            f"{days:g} days the model predicts {predicted_now.violation_rate:.2%} "
            f"[{predicted_now.ci_low:.2%}, {predicted_now.ci_high:.2%}] of windows at the current level and "
            f"{predicted_new.violation_rate:.2%} [{predicted_new.ci_low:.2%}, {predicted_new.ci_high:.2%}] at the "
            f"recommended one, against a {choice.level} target of {target:.2%}.")
        rollback_rate = max(3 * target, 1.5 * predicted_new.ci_high)
        return {
            **self._head(series, policy, choice, at, trigger),
            "predicted": {"current": predicted_now.as_dict(), "recommended": predicted_new.as_dict()},
            "backtest": {"span_s": new_bt["span_s"], "current": now_bt, "recommended": new_bt},
            "confidence": model_confidence,
            "risk": {"level": risk_level, "reasons": reasons},
            "rationale": rationale,
            "rollback_criteria": [
                f"the realised violation rate of {choice.recommended:g} over 24 h is above {rollback_rate:.2%}",
                f"more than {max(1, round(predicted_new.breaches_per_week / 7 / max(policy.consecutive, 1)) * 2)} "
                f"alert episodes in 24 h",
                "a drift is detected on the series",
            ],
            "guards": list(choice.guards),
            "strategy": strategy.as_dict(),
            "model": model_summary(model, at),
        }

    def _kind(self, policy: Policy) -> str:
        return "model" if policy.name in self.models_only else "policy"

    def _head(self, series: Series, policy: Policy, choice: LevelChoice, at: float, trigger: str) -> dict:
        """What every recommendation's data starts with: its target, and the levels."""
        return {"target": {"kind": self._kind(policy), "name": policy.name, "level": choice.level},
                "service": series.service, "metric": series.metric, "labels": series.labels,
                "aggregate": policy.aggregate, "direction": policy.direction,
                "made_at": at, "trigger": trigger, "status": choice.status,
                "current": choice.current, "recommended": choice.recommended, "horizon_s": self.horizon_s}

    def _first_data(self, series: Series, policy: Policy, held: PolicyModel, choice: LevelChoice, at: float,
                    trigger: str, model_confidence: float, new_bt: dict, risk_level: str, reasons: list[str]) -> dict:
        """The data of a level recommended for a ``models:`` entry: nothing to compare it with."""
        model, strategy = held.model, self.strategy
        target = strategy.rate(choice.level)
        predicted = choice.predicted_recommended
        rationale = (
            f"{series.service} {series.metric} has no {choice.level} level. Over the last {new_bt['windows']} "
            f"windows ({model.span_s / 86400:.1f} days learned, the last {new_bt['span_s'] / 86400:.1f} days "
            f"backtested) its {policy.aggregate} "
            f"would have crossed {choice.recommended:g} in {new_bt['breach_windows']} windows ({new_bt['episodes']} "
            f"alert episodes). For the next {self.horizon_s / 86400:g} days the model predicts "
            f"{predicted.violation_rate:.2%} [{predicted.ci_low:.2%}, {predicted.ci_high:.2%}] of windows over it, "
            f"against a {choice.level} target of {target:.2%}.")
        return {
            **self._head(series, policy, choice, at, trigger),
            "predicted": {"current": None, "recommended": predicted.as_dict()},
            "backtest": {"span_s": new_bt["span_s"], "current": None, "recommended": new_bt},
            "confidence": model_confidence,
            "risk": {"level": risk_level, "reasons": reasons},
            "rationale": rationale,
            "rollback_criteria": [f"the realised violation rate of {choice.recommended:g} over 24 h is above "
                                  f"{max(3 * target, 1.5 * predicted.ci_high):.2%}",
                                  "a drift is detected on the series"],
            "guards": list(choice.guards),
            "strategy": strategy.as_dict(),
            "model": model_summary(model, at),
        }

    def status(self, series: Iterable[Series]) -> list[dict]:
        """The newest recommendation of every target, with the newest score of that target and the
        model's running accuracy."""
        return [{**data, "last_score": held.scored.get(level), "accuracy": held.accuracy, "held": held.held}
                for s in series if s.models for held in s.models.values() for level, data in held.latest.items()]

    def alert_labels(self, series: Series) -> list[dict[str, str]]:
        return [inaccurate_condition(_target_labels(series, name, level), "", {}, []).labels
                for name in series.models or () for level in LEVELS]

    def release(self, series: Series) -> None:
        """Delete the keys of its models' chunks and reports."""
        for name, held in (series.models or {}).items():
            self._forget(series.key, name, held.model.chunks())
        self._forget_scores(series.key)

    def writes(self, partition: int) -> Iterable[tuple[str, bytes | None]]:
        writes, self._writes = self._writes, {}
        for (kind, policy, first, series_key), value in writes.items():
            key = state_keys.model_chunk_key(partition, policy, first, series_key) if kind == state_keys.MODEL_CHUNK \
                else state_keys.model_report_key(partition, policy, series_key)
            yield key, value

    def series_state(self, series: Series) -> bytes | None:
        if not series.models:
            return None
        return orjson.dumps({"v": STATE_VERSION, "models": {name: held.to_state()
                                                            for name, held in series.models.items()}})

    def restore_parts(self, chunks: dict[tuple[str, str], dict[int, bytes]], reports: dict[tuple[str, str], bytes]):
        """The chunks and reports read at a restore, before the series that own them."""
        self._restored_chunks = chunks
        self._restored_reports = {}
        for owner, raw in reports.items():
            report = orjson.loads(raw)
            if report.get("v") != STATE_VERSION:
                raise ValueError(f"unsupported threshold model report version {report.get('v')!r} (this version "
                                 f"reads {STATE_VERSION})")
            self._restored_reports[owner] = report

    def restore_series(self, series: Series, state: bytes) -> None:
        saved = orjson.loads(state)
        if saved.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported threshold models state version {saved.get('v')!r} (this version reads "
                             f"{STATE_VERSION})")
        if series.models:
            policies = {p.name: p for p in self.policies_for.get(series.group, ())}
            for name, held in saved["models"].items():
                policy = policies.get(name)
                chunks = self._restored_chunks.pop((series.key, name), {})
                restored = PolicyModel.from_state(held, chunks, self._restored_reports.pop((series.key, name), None))
                if policy is not None and (restored.model.direction, restored.model.window_s) == (
                        policy.direction, policy.window_s):
                    series.models[name] = restored
                    self._recall(series.key, restored)
                    self._forget_chunks(series.key, name, chunks.keys() - restored.model.chunks().keys())
                else:
                    self._forget(series.key, name, restored.model.chunks())

    def forget_unclaimed(self) -> None:
        """After a restore: delete the keys of the models no restored series took (of a policy no
        longer configured, or of a series not restored)."""
        for (series_key, name), chunks in self._restored_chunks.items():
            self._forget(series_key, name, chunks)
        for series_key, name in self._restored_reports.keys() - self._restored_chunks.keys():
            self._forget(series_key, name, ())
        self._restored_chunks, self._restored_reports = {}, {}

    def _forget(self, series_key: str, policy: str, chunks: Iterable[int]) -> None:
        self._forget_chunks(series_key, policy, chunks)
        self._writes[state_keys.MODEL_REPORT, policy, 0, series_key] = None

    def _forget_chunks(self, series_key: str, policy: str, chunks: Iterable[int]) -> None:
        """Delete the keys of chunks no longer in a model's history (left it, or never restored)."""
        for key in chunks:
            self._writes[state_keys.MODEL_CHUNK, policy, key, series_key] = None


def _target_labels(series: Series, policy: str, level: str) -> dict[str, str]:
    """What names a policy level's model of a series in its alert."""
    return {**series.labels, "service": series.service, "metric": series.metric, "policy": policy, "level": level}


def inaccurate_condition(labels: dict[str, str], what: str, data: dict, inaccurate: list[str]) -> Condition:
    """``ThresholdModelInaccurate`` of the target ``labels`` name (``what`` in words), from a score's
    ``data``: firing when a level's score is ``inaccurate``."""
    labels = {**labels, "alertname": INACCURATE_ALERT, "severity": "ticket"}
    if not inaccurate:
        return Condition(labels, False)
    parts = [f"{which} level {data['levels'][which]:g}: predicted {data[which]['predicted']:.2%} "
             f"[{data[which]['ci_low']:.2%}, {data[which]['ci_high']:.2%}], actual {data[which]['actual']:.2%}"
             for which in inaccurate]
    counted = data[inaccurate[0]]
    over = f"{counted['windows']} windows" if "windows" in counted else f"{counted['events']} events"
    notes = {"summary": f"threshold model of {what} was off by more than 15%, beyond chance among the week's scores",
             "description": "; ".join(parts) + f" over {over}. The alert resolves at the next accurate score of "
                            "this level."}
    return Condition(labels, True, notes)


def _in_progress(series: Series, held: PolicyModel, at: float, fit: Fit | None) -> str | None:
    """What is in progress on the series at event time ``at`` (None: nothing); ``fit``: its model's."""
    settling = series.drift.settling(at) if series.drift is not None else []
    if settling:
        return f"a drift of {', '.join(settling)} settles"
    if held.model.unusual(fit):
        return "an incident: the newest windows are all beyond what the model expects 99% of the time"
    return None

"""One SLO's good/bad event counts, error budget, burn rates and alert conditions.

Good and bad are decided at ingest by the SLO's own rule, so counts are exact
for threshold SLOs too (sketches are approximate and short-lived). Counts live
in the same multi-resolution windows as the SLIs, without sketches. With
timeslices budgeting, each closed slice becomes one good or bad event of a
second window set, and budget and burn rates count slices.

Evaluation is in event time: ``now`` is the newest event time the partition has
seen (or the idle-advanced one), and every window ends at the end of the base
bucket holding ``now``, open buckets included, so an alert can fire on the
batch that makes its tier hold instead of a grace period later.
"""

from __future__ import annotations

import math

import numpy as np

from .alerts import Condition, fingerprint
from .buckets import OK, OK_KNOWN, Resolution, bucket_start
from .budget import Budget, BurnTier, evaluate_tiers, judge_tier, time_to_exhaustion
from .objectives import Slo, Timeslices
from .windows import SeriesWindows

STATE_VERSION = 1
BURN_ALERT = "SLOErrorBudgetBurn"
NO_DATA_ALERT = "SLONoData"
FORECAST_WINDOW_S = 3600


def counting_resolutions(resolutions: tuple[Resolution, ...]) -> tuple[Resolution, ...]:
    """The SLI resolutions without quantile sketches: an SLO needs counts only."""
    return tuple(Resolution(r.width, r.slots, 0) for r in resolutions)


class SloTracker:
    def __init__(self, slo: Slo, resolutions: tuple[Resolution, ...]):
        self.slo = slo
        counting = counting_resolutions(resolutions)
        self.events = SeriesWindows(counting)
        self.slices = SeriesWindows(counting) if isinstance(slo.budgeting, Timeslices) else None
        self.slices_until = -1  # end of the newest slice judged
        self.last_seen = -math.inf  # newest event time of a matching measurement
        # Measurements of a bucket closed and past the base ring: a series that first shows up with
        # data that old. Not counted in the SLO (its series' SLI windows have them).
        self.too_old = 0
        self._status: dict | None = None
        self.evaluated_at = -1  # end of the windows of the last evaluation
        self.dirty = True
        self.sources = 0  # series feeding this SLO in this partition (label sets)
        self._labels: dict[tuple[str, str], tuple[dict[str, str], str]] = {}

    @property
    def base_width(self) -> int:
        return self.events.base_width

    def feed(self, start: int, values: np.ndarray, oks: np.ndarray, offsets: np.ndarray, newest_ts: float,
             counts: tuple[int, int] | None = None) -> int:
        """Judge and count the measurements of one base bucket (offsets ascending); ``counts``
        is (good, judged) when the caller has judged them already. A bucket closed and past the
        base ring is counted in ``too_old``, not in the SLO."""
        if self.events.too_old(start):
            self.too_old += int(offsets.size)
            self.dirty = True
            return 0
        if counts is not None and self.events.add_counts(start, offsets, *counts):
            added = int(offsets.size)
        else:
            added = self.events.add_flags(start, self.slo.good.flags(values, oks), offsets)
        self.last_seen = max(self.last_seen, newest_ts)
        self.dirty = True
        return added

    def close_until(self, watermark: float) -> None:
        if self.slices is None:
            if self.events.close_until(watermark):
                self.dirty = True
            return
        # Slices are judged on the base ring: a close that jumps further than the ring (a backlog
        # released at once) is taken in steps of less than a ring, each judged before the next.
        step = self.events.levels[0].slots * self.base_width - self.slo.budgeting.slice_s
        if step <= 0:
            raise ValueError("a timeslice must be shorter than the base ring")
        at = self.events.closed_until
        while True:
            lowest = min(self.events.open_starts, default=watermark)  # nothing to judge before it
            at = min(max(at, lowest) + step, watermark)
            self._close_and_judge(at)
            if at >= watermark:
                return

    def _close_and_judge(self, watermark: float) -> None:
        if self.events.close_until(watermark):
            self.dirty = True
        slice_s = self.slo.budgeting.slice_s
        ratio = self.slo.budgeting.good_if_ratio_ge
        judged_until = (self.events.closed_until // slice_s) * slice_s
        oldest = -(-(judged_until - self.events.levels[0].slots * self.base_width) // slice_s) * slice_s  # aligned
        for start in range(max(self.slices_until, oldest, 0), judged_until, slice_s):
            if start < self.slices_until:
                continue
            row = self.events.totals(start, start + slice_s)
            if row[OK_KNOWN] > 0:
                good = int(row[OK] / row[OK_KNOWN] >= ratio)
                # The mark makes a replayed slice a no-op.
                self.slices.add_flags(bucket_start(start, self.base_width), np.array([good], dtype=np.int8),
                                      np.array([start + slice_s]))
        if judged_until > self.slices_until:
            self.slices_until = judged_until
            self.slices.close_until(watermark)
            self.dirty = True

    def counts(self, start: float, end: int) -> tuple[float, float]:
        """(bad, total) judged events over [start, end), to the base width."""
        lo = bucket_start(start, self.base_width)
        row = (self.slices or self.events).totals(lo, end)
        return float(row[OK_KNOWN] - row[OK]), float(row[OK_KNOWN])

    def evaluate(self, now: float) -> tuple[dict, list[Condition]]:
        """Budget, burn rates and the alert conditions at event time ``now``."""
        conditions = self.judge(now)
        return self.status, conditions

    def judge(self, now: float) -> list[Condition]:
        """The alert conditions at event time ``now``. Cheap on purpose (it runs at every base
        bucket of every SLO): a tier's long window is read only when its short one reaches the
        threshold, and the status (SLO window, forecast) is computed only when read."""
        slo = self.slo
        end = bucket_start(now, self.base_width) + self.base_width
        over = self._window_counts(end)
        self.evaluated_at = end
        self._status = None
        conditions = []
        for severity in dict.fromkeys(t.severity for t in slo.tiers):
            holding = None
            for tier in slo.tiers:
                if tier.severity != severity:
                    continue
                result = judge_tier(tier, over, slo.objective, slo.min_events, lazy=True)
                if result.holds:
                    holding = (tier, result.long_burn, result.short_burn)
                    break
            # Annotations are read only when an alert fires or holds: build them only then.
            notes = self._burn_annotations(*holding, end, over) if holding else {}
            conditions.append(self._condition(BURN_ALERT, severity, holding is not None, notes))
        if slo.no_data_s is not None and self.last_seen > -math.inf:
            silent_for = now - self.last_seen
            silent = silent_for >= slo.no_data_s
            notes = self._annotations(
                f"{slo.service} sends no {slo.metric} measurements",
                f"No measurement for SLO {slo.name} for {silent_for:.0f}s (alerting after {slo.no_data_s}s).",
            ) if silent else {}
            conditions.append(self._condition(NO_DATA_ALERT, slo.no_data_severity, silent, notes))
        return conditions

    def _window_counts(self, end: int):
        """``over(span_s)`` -> (bad, total) over [end - span_s, end), memoised."""
        windows = self.slices or self.events
        closed = windows.closed_until
        # Every window longer than the grace period shares the open tail [closed, end).
        if end > closed:
            open_row = windows.open_totals(closed, end)
            open_bad, open_total = float(open_row[OK_KNOWN] - open_row[OK]), float(open_row[OK_KNOWN])
        memo: dict[float, tuple[float, float]] = {}

        def over(span_s: float) -> tuple[float, float]:
            if span_s not in memo:
                lo = bucket_start(end - span_s, self.base_width)
                if end <= closed or lo >= closed:
                    memo[span_s] = self.counts(lo, end)
                else:
                    row = windows.closed_totals(lo, closed).tolist()  # Python floats: cheaper arithmetic
                    memo[span_s] = row[OK_KNOWN] - row[OK] + open_bad, row[OK_KNOWN] + open_total
            return memo[span_s]

        return over

    def _budget(self, end: int, over) -> tuple[float, Budget]:
        window_start = self.slo.window.start(end)
        bad, total = over(end - window_start)
        return window_start, Budget(self.slo.objective, total, bad)

    @property
    def status(self) -> dict | None:
        """The last evaluation's windows, for the status API and the metrics (computed when read)."""
        if self.evaluated_at < 0:
            return None
        if self._status is None or self._status["evaluated_at"] != self.evaluated_at:
            self._status = self._build_status(self.evaluated_at)
        return self._status

    def _build_status(self, end: int) -> dict:
        slo = self.slo
        over = self._window_counts(end)
        window_start, budget = self._budget(end, over)
        results = evaluate_tiers(slo.tiers, over, slo.objective, slo.min_events)
        forecast_bad, _ = over(FORECAST_WINDOW_S)
        exhaustion = time_to_exhaustion(budget.remaining_events, int(forecast_bad), FORECAST_WINDOW_S)
        burn_rates = {}
        for result in results:
            burn_rates[_span(result.tier.long_s)] = result.long_burn
            burn_rates[_span(result.tier.short_s)] = result.short_burn
        return {
            "slo": slo.name,
            "service": slo.service,
            "metric": slo.metric,
            "objective": slo.objective,
            "window": slo.window.describe(),
            "window_start": window_start,
            "evaluated_at": end,
            "budgeting": "occurrences" if self.slices is None else "timeslices",
            "events": budget.total,
            "bad_events": budget.bad,
            "sli": budget.sli,
            "error_budget": {
                "total_events": budget.allowed_bad,
                "consumed_events": budget.bad,
                "remaining_events": budget.remaining_events,
                "consumed_ratio": budget.consumed_ratio,
                "remaining_ratio": budget.remaining_ratio,
            },
            "burn_rates": burn_rates,
            "exhaustion": {
                "seconds": _finite(exhaustion.seconds),
                "low_s": _finite(exhaustion.low),
                "high_s": _finite(exhaustion.high),
                "confidence": 0.9,
                "rate_window_s": FORECAST_WINDOW_S,
            },
            "tiers": [
                {"severity": r.tier.severity, "long": _span(r.tier.long_s), "short": _span(r.tier.short_s),
                 "threshold": r.tier.burn_rate, "long_burn": r.long_burn, "short_burn": r.short_burn,
                 "long_events": r.long_events, "holds": r.holds, "low_traffic": r.low_traffic}
                for r in results
            ],
            "last_seen": _finite(self.last_seen),
            "too_old_measurements": self.too_old,
        }

    def labels(self, alertname: str, severity: str) -> dict[str, str]:
        return {**self.slo.labels, "alertname": alertname, "service": self.slo.service, "slo": self.slo.name,
                "severity": severity}

    def _condition(self, alertname: str, severity: str, holds: bool, notes: dict[str, str]) -> Condition:
        """Labels and fingerprint are made once per alert: judging runs at every bucket."""
        made = self._labels.get((alertname, severity))
        if made is None:
            labels = self.labels(alertname, severity)
            made = self._labels[(alertname, severity)] = (labels, fingerprint(labels))
        return Condition(made[0], holds, notes, made[1])

    def _annotations(self, summary: str, description: str, **extra: str) -> dict[str, str]:
        notes = {"summary": summary, "description": description, **extra}
        if self.slo.runbook_url:
            notes["runbook_url"] = self.slo.runbook_url
        return notes

    def _burn_annotations(self, tier: BurnTier, long: float, short: float, end: int, over) -> dict[str, str]:
        slo = self.slo
        name = f"{tier.severity} {_span(tier.long_s)}/{_span(tier.short_s)} >= {tier.burn_rate:g}x"
        _, budget = self._budget(end, over)
        remaining = budget.remaining_ratio
        forecast_bad, _ = over(FORECAST_WINDOW_S)
        exhaustion_s = time_to_exhaustion(budget.remaining_events, int(forecast_bad), FORECAST_WINDOW_S).seconds
        return self._annotations(
            f"{slo.name}: error budget burn {_fmt(long)}x over {_span(tier.long_s)}, "
            f"{_fmt(short)}x over {_span(tier.short_s)} ({tier.severity} at {tier.burn_rate:g}x both)",
            f"SLO {slo.name} ({slo.objective:.4%} of {slo.service} {slo.metric} {slo.good.describe()}, "
            f"{slo.window.describe()}): tier {name} holds; burn rate {_fmt(long)}x over {_span(tier.long_s)} "
            f"and {_fmt(short)}x over {_span(tier.short_s)}.",
            tier=name,
            burn_rate_long=_fmt(long),
            burn_rate_short=_fmt(short),
            budget_remaining="n/a" if remaining is None else f"{remaining:.4f}",
            exhaustion_s="never" if math.isinf(exhaustion_s) else f"{exhaustion_s:.0f}",
        )

    # --- state ------------------------------------------------------------

    def header_state(self) -> dict:
        return {
            "v": STATE_VERSION,
            "signature": self.slo.counting_signature,
            "events": self.events.header_state(),
            "slices": None if self.slices is None else self.slices.header_state(),
            "slices_until": self.slices_until,
            "last_seen": _finite(self.last_seen),
            "too_old": self.too_old,
        }

    def drain_dirty(self) -> list[tuple[str, int, int, dict]]:
        changed = [("e", level, slot, state) for level, slot, state in self.events.drain_dirty()]
        if self.slices is not None:
            changed += [("t", level, slot, state) for level, slot, state in self.slices.drain_dirty()]
        self.dirty = False
        return changed

    @classmethod
    def restore(cls, slo: Slo, resolutions: tuple[Resolution, ...], header: dict,
                slots: list[tuple[str, int, int, dict]]) -> SloTracker | None:
        """None when the stored counts were made under another rule (they would mislead)."""
        if header.get("v") != STATE_VERSION or header["signature"] != slo.counting_signature:
            return None
        tracker = cls(slo, resolutions)
        tracker.events = SeriesWindows.from_states(
            header["events"], [(lv, sl, st) for kind, lv, sl, st in slots if kind == "e"])
        if tracker.slices is not None and header["slices"] is not None:
            tracker.slices = SeriesWindows.from_states(
                header["slices"], [(lv, sl, st) for kind, lv, sl, st in slots if kind == "t"])
            tracker.slices_until = header["slices_until"]
        tracker.last_seen = -math.inf if header["last_seen"] is None else header["last_seen"]
        tracker.too_old = int(header.get("too_old", 0))
        return tracker


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _finite(value: float) -> float | None:
    return None if value is None or math.isinf(value) else float(value)


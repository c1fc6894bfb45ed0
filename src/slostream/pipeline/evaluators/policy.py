"""Warning/critical threshold policies on a series' window aggregates (``core.policy``): each
completed policy window is judged in event time; level changes are breach events, and firing
levels alert conditions."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from slostream.core.buckets import Aggregate
from slostream.core.closed import Closed
from slostream.core.policy import PolicyWatch, aggregate_value
from slostream.pipeline.alerting import Alerting
from slostream.pipeline.envelopes import breach_event
from slostream.pipeline.evaluators import Closes, Evaluator
from slostream.pipeline.series import Series
from slostream.pipeline.types import Output, PipelineConfig

STATE_VERSION = 1
MAX_WINDOWS_AFTER_JUMP = 10  # a close that jumps ahead judges at most this many windows per policy


class PolicyEvaluator(Evaluator):
    kind = "policies"

    def __init__(self, config: PipelineConfig, alerting: Alerting):
        self.source = config.source
        self.alerting = alerting
        self.policies_for: dict[tuple[str, str], list] = {}
        for policy in config.policies:
            self.policies_for.setdefault((policy.service, policy.metric), []).append(policy)

    def watch(self, series: Series) -> None:
        series.watches = [PolicyWatch(p) for p in self.policies_for.get(series.group, ())]

    def status(self, series: Iterable[Series]) -> list[dict]:
        """Every series a policy finds at warning or critical: the level, the value and the end of the
        window that set it."""
        return sorted(({"policy": w.policy.name, "service": s.service, "metric": s.metric, "labels": s.labels,
                        "level": w.level, "value": w.last_value, "window_end": w.evaluated_until}
                       for s in series for w in s.watches if w.level != "ok"),
                      key=lambda status: (status["policy"], orjson.dumps(status["labels"])))

    def window_lengths(self, group: tuple[str, str]) -> dict[int, bool]:
        lengths: dict[int, bool] = {}
        for policy in self.policies_for.get(group, ()):
            lengths[policy.window_s] = lengths.get(policy.window_s, False) or policy.aggregate.startswith("p")
        return lengths

    def closed(self, closes: Closes, out: Output) -> None:
        if not self.policies_for:
            return
        for i in closes.moved:
            series = closes.series[i]
            if series.watches:
                self._judge_in_steps(series, closes.closed, int(closes.before[i]), out)

    def _judge_in_steps(self, series: Series, closed: Closed, before: int, out: Output) -> None:
        """Judge the series' policies on its windows in ``closed``: at the end of each, oldest first,
        then at its final horizon (moved from ``before``), so a backlog closed at once (read in one
        batch, or released by alignment) judges (and alerts) window by window as a live run does."""
        mine = sorted(closed.rows_of(series.windows.owner).tolist(), key=lambda i: closed.starts[i] + closed.lengths[i])
        ends = [int(closed.starts[i] + closed.lengths[i]) for i in mine]
        aggregates = [closed.aggregate(i) for i in mine]
        final = series.windows.closed_until
        taken, last = 0, before
        for horizon in sorted(set(ends)):
            upto = taken
            while upto < len(ends) and ends[upto] <= horizon:
                upto += 1
            self._judge(series, aggregates[taken:upto], horizon, out)
            taken, last = upto, horizon
        if final > last:
            self._judge(series, aggregates[taken:], final, out)

    def _judge(self, series: Series, completed: list[Aggregate], closed_until: int, out: Output) -> None:
        """Judge every policy window a close up to ``closed_until`` completed (a window without data,
        too: no value, or throughput 0), at most the newest ten per policy after a jump. Each
        policy's alert conditions are judged at the end of its newest window, not at the horizon:
        where a close stops depends on how the log was cut into batches."""
        aggregates = {(agg.start, agg.end): agg for agg in completed}
        for watch in series.watches:
            policy = watch.policy
            window = policy.window_s
            if closed_until < watch.evaluated_until + window:
                continue  # no new window closed
            last = (closed_until // window) * window
            first = max(watch.evaluated_until + window, last - MAX_WINDOWS_AFTER_JUMP * window) \
                if watch.evaluated_until else last
            changed = False
            for end in range(first, last + 1, window):
                if end <= watch.evaluated_until:
                    continue
                agg = aggregates.get((end - window, end))
                value = aggregate_value(agg, policy.aggregate) if agg is not None and agg.count else (
                    0.0 if policy.aggregate == "throughput" else None)
                transition = watch.observe(value)
                watch.evaluated_until = end
                changed = True
                if transition is not None:
                    out.breaches.append(breach_event(series, watch, transition, end, self.source))
            if changed:  # a replay would not judge it again: written at the next checkpoint
                store, owner = series.windows.store, series.windows.owner
                store.changed[owner] = store.emitted[owner] = True
                self.alerting.evaluate(watch.evaluated_until, watch.conditions(series.labels), out)

    def alert_labels(self, series: Series) -> list[dict[str, str]]:
        return [condition.labels for watch in series.watches for condition in watch.conditions(series.labels)]

    def series_state(self, series: Series) -> bytes | None:
        if not series.watches:
            return None
        return orjson.dumps({"v": STATE_VERSION, "watches": {w.policy.name: w.to_state() for w in series.watches}})

    def restore_series(self, series: Series, state: bytes) -> None:
        saved = orjson.loads(state)
        if saved.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported policy state version {saved.get('v')!r} (this version reads "
                             f"{STATE_VERSION})")
        self.restore_watches(series, saved["watches"])

    @staticmethod
    def restore_watches(series: Series, watched: dict) -> None:
        """The watches of the policies that watch ``series`` now, as saved where they were."""
        series.watches = [PolicyWatch.from_state(w.policy, watched[w.policy.name]) if w.policy.name in watched else w
                          for w in series.watches]

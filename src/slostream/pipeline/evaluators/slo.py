"""SLOs: each one's tracker (``core.tracker``) counts the good and bad events of every series it
covers, base bucket by base bucket, and is judged (budget, burn rates, alert conditions) at its own
clock: the newest event time of the series it reads.

An SLO's counts close when every series it reads has passed them (the slowest watermark), so
whatever a series accepts its SLOs can still count. A batch is cut where an SLO's clock enters a
new base bucket (``slices``), and the SLO judged there, as a live run would judge it. Judging is
also limited to ``EVALUATION_INTERVAL_S`` of wall time per partition: the trackers with news wait
in ``touched``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from slostream.core.objectives import GoodRule, Slo, Tally
from slostream.core.tracker import SloTracker
from slostream.core.watermark import idle_watermark, running_max_before
from slostream.pipeline import rows
from slostream.pipeline.alerting import Alerting
from slostream.pipeline.evaluators import Closes, Evaluator, Runs
from slostream.pipeline.series import IdleClock, Series, finite_or_none, from_finite, held_json
from slostream.pipeline.state_keys import slo_header_key, slo_slot_key
from slostream.pipeline.types import EVALUATION_INTERVAL_S, Output, PipelineConfig


class SloEvaluator(Evaluator):
    kind = "slos"

    def __init__(self, config: PipelineConfig, alerting: Alerting):
        self.config = config
        self.alerting = alerting
        self.slos_for: dict[tuple[str, str], list[Slo]] = {}
        for slo in config.slos:
            self.slos_for.setdefault((slo.service, slo.metric), []).append(slo)
        self.trackers: dict[str, SloTracker] = {}
        self.sources: dict[tuple[str, str], list[Series]] = {}  # (service, metric) -> series feeding SLOs
        self.idle_clocks: dict[tuple[str, str], IdleClock] = {}  # SLOs whose series were all evicted
        self.touched: set[str] = set()  # trackers with news since their last evaluation
        self._last_evaluation = -np.inf  # wall time

    # --- the interface ------------------------------------------------------

    def watch(self, series: Series) -> None:
        slos = self.slos_for.get(series.group, ())
        for slo in slos:
            tracker = self.trackers.get(slo.name)
            if tracker is None:
                tracker = self.trackers[slo.name] = SloTracker(slo, self.config.resolutions)
            tracker.sources += 1
            series.trackers.append(tracker)
        if slos:
            self.sources.setdefault(series.group, []).append(series)
            self.idle_clocks.pop(series.group, None)

    def closed(self, closes: Closes, out: Output) -> None:
        for group in {series.group for series in closes.series if series.trackers}:
            self._close(group)
            if closes.advanced:  # time passed: burn windows slide, slices are judged
                self.touched.update(t.slo.name for t in self.trackers_of(group))

    def release(self, series: Series) -> None:
        if not series.trackers:
            return
        for tracker in series.trackers:
            tracker.sources -= 1
        sources = self.sources[series.group]
        sources.remove(series)
        if not sources:
            del self.sources[series.group]
            self.idle_clocks[series.group] = IdleClock(series.max_ts, series.watermark, series.last_activity)

    def status(self, series: Iterable[Series]) -> list[dict]:
        return sorted((t.status for t in self.trackers.values() if t.status is not None), key=lambda s: s["slo"])

    def writes(self, partition: int) -> Iterator[tuple[str, bytes | None]]:
        for name, tracker in self.trackers.items():
            if not tracker.dirty:
                continue
            for kind, level, slot, state in tracker.drain_dirty():
                yield slo_slot_key(partition, kind, level, slot, name), None if state is None else held_json(state)
            yield slo_header_key(partition, name), held_json(tracker.header_state())

    def restore(self, headers: dict[str, dict], slots: dict[str, list]) -> set[str]:
        """The trackers of the SLOs configured now, from their saved headers and count slots (unless
        counted under another rule). The names of those restored."""
        for slo in self.config.slos:
            header = headers.get(slo.name)
            if header is None:
                continue
            tracker = SloTracker.restore(slo, self.config.resolutions, header, slots.get(slo.name, []))
            if tracker is not None:
                self.trackers[slo.name] = tracker
        return set(self.trackers)

    def idle_state(self) -> list:
        return [[service, metric, finite_or_none(clock.max_ts), finite_or_none(clock.watermark)]
                for (service, metric), clock in sorted(self.idle_clocks.items())]

    def restore_idle(self, saved: list, now: float) -> None:
        self.idle_clocks = {(service, metric): IdleClock(from_finite(max_ts), from_finite(watermark), now)
                            for service, metric, max_ts, watermark in saved}

    # --- feeding ------------------------------------------------------------

    def slices(self, ids: np.ndarray, keys: list[tuple], ts: np.ndarray):
        """(start, stop, crossings) parts of a batch: a part starts where the clocks of SLOs (the
        newest event time of the series they read) enter a new base bucket; ``crossings`` are
        those SLOs' (service, metric) with their clock before the part."""
        n = ts.size
        if not self.slos_for:
            yield 0, n, []
            return
        groups = {key[:2] for key in keys if key[:2] in self.slos_for}
        if not groups:
            yield 0, n, []
            return
        group_keys = sorted(groups)
        number = {key: g for g, key in enumerate(group_keys)}
        group_of_id = np.array([number.get(key[:2], -1) for key in keys], dtype=np.int64)
        members = np.flatnonzero(group_of_id[ids] >= 0)
        initial = np.array([self.now_of(key) for key in group_keys])
        member_groups = group_of_id[ids[members]]
        before, _ = running_max_before(member_groups, ts[members], initial)
        after = np.maximum(before, ts[members])
        width = self.config.resolutions[0].width
        with np.errstate(invalid="ignore"):
            crossing = (before > -np.inf) & (np.floor(after / width) > np.floor(before / width))
        cuts: dict[int, list] = {}
        for i in np.flatnonzero(crossing).tolist():
            cuts.setdefault(int(members[i]), []).append((group_keys[member_groups[i]], float(before[i])))
        bounds = sorted(cuts)
        if not bounds or bounds[0] != 0:
            bounds = [0, *bounds]
        for start, stop in zip(bounds, [*bounds[1:], n]):
            yield start, stop, cuts.get(start, [])

    def judge_crossing(self, group: tuple[str, str], clock: float, out: Output) -> None:
        """The SLOs of ``group`` at ``clock``, before the part of a batch that moves it into a new
        base bucket."""
        self.evaluate(out, [t.slo.name for t in self.trackers_of(group)], clock)

    def ingested(self, runs: Runs) -> None:
        """Count each run into the SLOs its series feeds, in order: an SLO fed by that series alone
        at once (each SLO rule judges the whole part once), one that covers several series once it
        has gathered them all (``_feed_gathered``)."""
        if not self.slos_for or not any(series.trackers for series in runs.series):
            return
        tallies: dict[GoodRule, Tally] = {}
        gathered: dict[str, list[np.ndarray]] = {}
        values, oks, offsets = runs.values, runs.oks, runs.offsets
        for series, start, target, newest, a, b in runs.each:
            for tracker in series.trackers:
                if tracker.sources == 1:
                    self._close_before(tracker, start, target)
                    rule = tracker.slo.good
                    tally = tallies.get(rule) or tallies.setdefault(rule, Tally(rule.flags(values, oks)))
                    tracker.feed(start, values[a:b], oks[a:b], offsets[a:b], newest, tally.counts(a, b))
                    self.touched.add(tracker.slo.name)
                else:
                    gathered.setdefault(tracker.slo.name, []).append(runs.idx[a:b])
        for name, parts in gathered.items():
            self._feed_gathered(name, np.concatenate(parts), runs.batch)

    def _feed_gathered(self, name: str, members: np.ndarray, batch: rows.Rows) -> None:
        """An SLO that covers several series gathers them; each base bucket is fed once, in offset
        order, so its replay mark stays exact."""
        tracker = self.trackers[name]
        width = self.config.resolutions[0].width
        starts = (np.floor(batch.ts[members] / width) * width).astype(np.int64)
        order = np.lexsort((batch.marks[members], starts))
        members, starts = members[order], starts[order]
        until = min(s.watermark for s in self._clocks(tracker.slo.service, tracker.slo.metric))
        for group in np.split(np.arange(len(members)), np.flatnonzero(np.diff(starts)) + 1):
            chosen = members[group]
            self._close_before(tracker, int(starts[group[0]]), until)
            tracker.feed(int(starts[group[0]]), batch.values[chosen], batch.oks[chosen], batch.marks[chosen],
                         float(batch.ts[chosen].max()))
        self.touched.add(tracker.slo.name)

    # --- clocks and judging -------------------------------------------------

    def advance_idle_clocks(self, now: float) -> None:
        config = self.config
        for group, clock in self.idle_clocks.items():
            mark = float(idle_watermark(clock.max_ts, clock.watermark, now - clock.last_activity, config.grace_s,
                                        config.idle_after_s))
            if mark > clock.watermark:
                clock.watermark = mark
                self._close(group)
                self.touched.update(t.slo.name for t in self.trackers_of(group))

    def evaluate_due(self, now: float, out: Output, force: bool = False) -> None:
        """Judge the SLOs with news, once the wall-clock limiter allows (``force``: now)."""
        if self.touched and (force or now - self._last_evaluation >= EVALUATION_INTERVAL_S):
            self.evaluate(out, self.touched)
            self._last_evaluation = now

    def evaluate(self, out: Output, names: Iterable[str], now: float | None = None) -> None:
        """Budgets, burn rates and alert conditions of the named SLOs, each at its own clock (or at
        ``now``)."""
        for name in list(names):
            tracker = self.trackers[name]
            self.touched.discard(name)
            at = self.now_of((tracker.slo.service, tracker.slo.metric)) if now is None else now
            if at == -np.inf:
                continue
            self.alerting.evaluate(at, tracker.judge(at), out)

    def trackers_of(self, group: tuple[str, str]) -> list[SloTracker]:
        return [self.trackers[slo.name] for slo in self.slos_for.get(group, ()) if slo.name in self.trackers]

    def now_of(self, group: tuple[str, str]) -> float:
        """An SLO's clock: the newest event time of the series it reads (or their idle-advanced time)."""
        grace = self.config.grace_s
        return max((max(s.max_ts, s.watermark + grace) for s in self._clocks(*group)), default=-np.inf)

    def _clocks(self, service: str, metric: str) -> list:
        """The clocks an SLO follows: its held series, or the idle clock they left when evicted."""
        clock = self.idle_clocks.get((service, metric))
        return self.sources.get((service, metric), []) if clock is None else [clock]

    def _close(self, group: tuple[str, str]) -> None:
        """Close an SLO's counts as far as the slowest series it reads has passed."""
        until = min(s.watermark for s in self._clocks(*group))
        for tracker in self.trackers_of(group):
            before = tracker.events.closed_until
            tracker.close_until(until)
            if tracker.events.closed_until != before:
                self.touched.add(tracker.slo.name)  # time passed: burn windows slide, slices judged

    def _close_before(self, tracker: SloTracker, start: int, until: float) -> None:
        """Before counting into the bucket at ``start``, close what the sources' watermark ``until``
        passed below it: an SLO whose clock jumps hours ahead never laps its base ring."""
        closed = tracker.events.closed_until
        if start > closed and until > closed:
            tracker.close_until(min(start, until))
            if tracker.events.closed_until != closed:
                self.touched.add(tracker.slo.name)


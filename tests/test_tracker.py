"""SLO tracking: exact counts, budget, burn rates and workbook fire/reset times, checked by brute force."""

from __future__ import annotations

import datetime as dt
import gc
from collections import deque

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from slostream.core.buckets import COUNT, DEFAULT_RESOLUTIONS, OK, OK_KNOWN, Resolution
from slostream.core.budget import BurnTier, detection_seconds
from slostream.core.objectives import GoodRule, Policy, SloWindow, Timeslices, calendar_start
from slostream.core.running_totals import RunningTotals
from slostream.core.tracker import SloTracker
from slostream.core.windows import SeriesWindows
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.state_keys import series_key
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config
from tests.slo_feed import T0, Feed, checkout_slo, slo_processor


def _rounded_start(windows: SeriesWindows, lo: int) -> int:
    """The documented rule: the start rounds out at the finest level still holding it (on the base
    ring an open bucket a whole ring after it has taken its slot)."""
    for number, level in enumerate(windows.levels):
        start = lo - lo % level.width
        newest = (windows.closed_until - 1) - (windows.closed_until - 1) % level.width
        if number == 0 and windows.open_starts:
            newest = max(newest, max(windows.open_starts))
        if start > newest - level.slots * level.width:
            return start
    return lo - lo % windows.levels[-1].width


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5 * 86400), st.booleans()), min_size=1, max_size=300),
       st.integers(0, 5 * 86400), st.integers(10, 4 * 86400))
def test_totals_equal_brute_force_with_the_start_rounded_at_the_finest_level_holding_it(events, lo_raw, span_raw):
    windows = SeriesWindows(DEFAULT_RESOLUTIONS)
    events.sort()
    for ts, ok in events:  # closing as the pipeline does: everything before the event's bucket
        windows.close_until(T0 + ts - ts % 10)
        windows.add(T0 + ts - ts % 10, np.array([1.0]), np.array([int(ok)], dtype=np.int8))
    last = T0 + events[-1][0]
    windows.close_until(last - last % 10)  # the newest bucket stays open
    hi = T0 + lo_raw - lo_raw % 10 + span_raw - span_raw % 10 + 10
    hi = min(hi, last - last % 10 + 10)
    lo = max(hi - (span_raw - span_raw % 10 + 10), T0)
    if hi < last - 3600:  # windows end near now; old ends are rounded too (not checked here)
        hi = last - last % 10 + 10
    totals = windows.totals(lo, hi)
    start = _rounded_start(windows, lo)
    inside = [(ts, ok) for ts, ok in events if start <= T0 + ts - ts % 10 < hi]
    assert totals[COUNT] == len(inside)
    assert totals[OK] == sum(ok for _, ok in inside) and totals[OK_KNOWN] == len(inside)
    if start == lo and lo < windows.closed_until:  # no rounding: the same as aggregate's cover
        closed_hi = min(hi, windows.closed_until)
        assert windows.totals(lo, closed_hi)[COUNT] == windows.aggregate(lo, closed_hi, with_sketch=False).count


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4 * 86400), st.booleans(), st.booleans()), min_size=1, max_size=120),
       st.lists(st.integers(10, 4 * 86400), min_size=1, max_size=6))
# An open bucket a whole base ring after a closed one takes its slot: the span from it must not be
# answered by the base level.
@example(events=[(960, False, False), (4660, False, True)], spans=[10])
@example(events=[(260, False, False), (3970, False, True)], spans=[10])
def test_running_totals_carried_across_closes_equal_a_fresh_sum_and_brute_force(events, spans):
    """Closed totals up to the newest close come from running totals made early and carried on
    by every close (gaps of days included); they must equal summing the levels afresh."""
    windows = SeriesWindows(DEFAULT_RESOLUTIONS)
    events.sort()
    for ts, ok, ask in events:
        start = T0 + ts - ts % 10
        windows.close_until(start)
        windows.add(start, np.array([1.0]), np.array([int(ok)], dtype=np.int8))
        if not ask:
            continue
        closed = windows.closed_until
        # Random spans, and windows starting exactly at every earlier bucket's start and end.
        edges = {T0 + t - t % 10 + d for t, _, _ in events if T0 + t < closed for d in (0, 10)}
        for lo in sorted({max(closed - span + span % 10, T0) for span in spans} | edges):
            running = windows.closed_totals(lo, closed)
            assert windows._running is not None
            rebuilt = RunningTotals.of(windows)  # from the levels as they are now
            fresh = rebuilt.since(*windows._answering_level(lo)) - rebuilt.since(*windows._answering_end(closed))
            assert running[COUNT] == fresh[COUNT] and running[OK] == fresh[OK] and running[OK_KNOWN] == fresh[OK_KNOWN]
            first = _rounded_start(windows, lo)
            inside = [(t, o) for t, o, _ in events if first <= T0 + t - t % 10 < closed]
            assert running[COUNT] == len(inside) and running[OK] == sum(o for _, o in inside)


def test_total_outage_fires_the_page_at_the_workbook_time_and_resets_when_the_short_window_clears():
    # 1 good request a second for two hours, then a total outage of 10 minutes, then good again.
    slo = checkout_slo(tiers=(BurnTier("page", 3600, 300, 14.4),))
    feed = Feed(slo_processor(slo))
    for t in range(0, 7200):
        feed.send(T0 + t, True)
    for t in range(7200, 7800):
        feed.send(T0 + t, False)
    for t in range(7800, 8400):
        feed.send(T0 + t, True)
    # The long window holds 3600 events: it reaches 14.4x after 0.0144 * 3600 bad ones.
    fire = detection_seconds(0.999, 14.4, 3600, 1.0)
    assert fire == pytest.approx(51.84)
    fired = feed.times("firing", "page")
    assert len(fired) == 1 and abs(fired[0] - (7200 + fire)) <= 10
    # It resets when the 5m window holds under 14.4 * 0.001 * 300 = 4.32 bad events.
    reset = 7800 + 300 - 4.32
    resolved = feed.times("resolved", "page")
    assert len(resolved) == 1 and abs(resolved[0] - reset) <= 10


def test_half_outage_at_99_percent_fires_at_the_workbook_time():
    slo = checkout_slo(objective=0.99, tiers=(BurnTier("page", 3600, 300, 14.4),))
    feed = Feed(slo_processor(slo))
    for t in range(0, 3600):
        feed.send(T0 + t, True)
    for t in range(3600, 5400):
        feed.send(T0 + t, t % 2 == 0)
    fired = feed.times("firing", "page")
    assert len(fired) == 1 and abs(fired[0] - (3600 + detection_seconds(0.99, 14.4, 3600, 0.5))) <= 10


@pytest.mark.slow
def test_budget_and_burn_rates_equal_brute_force_counts():
    rng = np.random.default_rng(7)
    slo = checkout_slo(good=GoodRule("value_le", 300.0))
    feed = Feed(slo_processor(slo))
    times = np.sort(rng.uniform(0, 2 * 86400, 20_000))
    values = rng.lognormal(5, 0.5, times.size)
    for t, v in zip(times, values):
        feed.send(T0 + float(t), value=float(v))
    tracker = feed.proc.slos.trackers["co"]
    status, _ = tracker.evaluate(T0 + float(times[-1]))
    end = status["evaluated_at"]
    bad = values > 300
    for tier in status["tiers"]:
        for key, span in (("long_burn", tier["long"]), ("short_burn", tier["short"])):
            seconds = {"m": 60, "h": 3600, "d": 86400}[span[-1]] * int(span[:-1])
            # Bucket starts, as the tracker counts them.
            starts = T0 + times - (T0 + times) % 10
            inside = starts >= end - seconds
            expected = bad[inside].sum() / inside.sum() / 0.001
            if seconds <= 3600:
                assert tier[key] == pytest.approx(expected, rel=1e-12)
            else:  # edges older than an hour are rounded out to 1-minute or 10-minute buckets
                assert tier[key] == pytest.approx(expected, rel=0.02)
    assert status["events"] == times.size and status["bad_events"] == bad.sum()
    budget = status["error_budget"]
    assert budget["total_events"] == pytest.approx(0.001 * times.size)
    assert budget["remaining_events"] == pytest.approx(0.001 * times.size - bad.sum())
    assert status["sli"] == pytest.approx(1 - bad.mean())


def test_timeslices_count_slices_judged_by_their_good_ratio():
    slo = checkout_slo(budgeting=Timeslices(60, 0.9), tiers=(BurnTier("page", 3600, 300, 14.4),))
    feed = Feed(slo_processor(slo))
    rng = np.random.default_rng(3)
    good_ratio_per_minute = rng.uniform(0.8, 1.0, 120)
    for minute, ratio in enumerate(good_ratio_per_minute):
        for second in range(60):
            feed.send(T0 + minute * 60 + second, bool(second < round(ratio * 60)))
    feed.send(T0 + 120 * 60 + 30, True)  # moves the watermark past the last full minute
    status, _ = feed.proc.slos.trackers["co"].evaluate(T0 + 7230)
    judged = np.array([round(r * 60) / 60 >= 0.9 for r in good_ratio_per_minute])
    assert status["budgeting"] == "timeslices"
    assert status["events"] == 120 and status["bad_events"] == (~judged).sum()


def test_timeslices_of_a_backlog_closed_at_once_are_all_judged():
    """Three hours held open (a series waiting for a lagging partition), then closed in one jump:
    every minute is judged, not only the last ring's worth."""
    tracker = SloTracker(checkout_slo(budgeting=Timeslices(60, 0.9), tiers=()), DEFAULT_RESOLUTIONS)
    rng = np.random.default_rng(4)
    ratios = rng.uniform(0.8, 1.0, 180)
    for minute, ratio in enumerate(ratios):
        for bucket in range(0, 60, 10):
            flags = (np.arange(10) < round(ratio * 10)).astype(np.int8)
            start = T0 + minute * 60 + bucket
            tracker.feed(start, np.ones(10), flags, np.arange(10) + start * 10, start + 9)
    assert tracker.events.closed_until == 0
    tracker.close_until(T0 + 180 * 60)
    judged = np.array([round(r * 10) / 10 >= 0.9 for r in ratios])
    bad, total = tracker.counts(T0, T0 + 180 * 60)
    assert (total, bad) == (180, (~judged).sum())


def test_a_closed_bucket_whose_slot_holds_an_open_one_is_too_old_not_reopened():
    """Reopened outside its slot it would lose its replay mark: a replay of its measurements would
    count them twice."""
    windows = SeriesWindows((Resolution(10, 4), Resolution(40, 4)))
    windows.add_flags(40, np.ones(5, dtype=np.int8), np.arange(5))
    windows.add_flags(50, np.ones(1, dtype=np.int8), np.array([5]))
    windows.close_until(80)
    windows.add_flags(80, np.ones(1, dtype=np.int8), np.array([6]))  # open, in bucket 40's slot
    assert windows.too_old(40) and not windows.too_old(80)
    with pytest.raises(ValueError):
        windows.add_flags(40, np.ones(5, dtype=np.int8), np.arange(5))
    assert windows.totals(0, 120)[COUNT] == 7


@pytest.mark.parametrize(("moment", "calendar", "zone", "expected"), [
    # Berlin: CET (UTC+1) until 29 March 2026, CEST (UTC+2) after.
    ("2026-03-31T12:00:00+00:00", "month", "Europe/Berlin", "2026-02-28T23:00:00+00:00"),
    ("2026-04-01T12:00:00+00:00", "month", "Europe/Berlin", "2026-03-31T22:00:00+00:00"),
    ("2026-03-31T22:30:00+00:00", "month", "Europe/Berlin", "2026-03-31T22:00:00+00:00"),
    # New York: EST (UTC-5) until 8 March 2026, EDT (UTC-4) after; weeks start on Monday.
    ("2026-03-05T12:00:00+00:00", "week", "America/New_York", "2026-03-02T05:00:00+00:00"),
    ("2026-03-10T12:00:00+00:00", "week", "America/New_York", "2026-03-09T04:00:00+00:00"),
    ("2026-03-09T03:59:00+00:00", "week", "America/New_York", "2026-03-02T05:00:00+00:00"),
    ("2026-05-15T00:00:00+00:00", "quarter", "Asia/Kathmandu", "2026-03-31T18:15:00+00:00"),
    ("2026-01-01T00:00:00+00:00", "quarter", "UTC", "2026-01-01T00:00:00+00:00"),
])
def test_calendar_windows_start_at_local_midnight_across_dst(moment, calendar, zone, expected):
    start = calendar_start(dt.datetime.fromisoformat(moment).timestamp(), calendar, zone)
    assert start == dt.datetime.fromisoformat(expected).timestamp()


def test_calendar_window_budget_resets_at_the_boundary_in_its_time_zone():
    slo = checkout_slo(window=SloWindow(calendar="month", timezone="Europe/Berlin"), tiers=())
    feed = Feed(slo_processor(slo))
    boundary = dt.datetime.fromisoformat("2026-03-31T22:00:00+00:00").timestamp()
    for t in range(-1800, 0, 10):  # bad events in the last half hour of March, Berlin time
        feed.send(boundary + t, False)
    for t in range(0, 600, 10):
        feed.send(boundary + t, True)
    before, _ = feed.proc.slos.trackers["co"].evaluate(boundary - 20)
    after, _ = feed.proc.slos.trackers["co"].evaluate(boundary + 590)
    assert before["bad_events"] > 0 and before["window_start"] == dt.datetime.fromisoformat(
        "2026-02-28T23:00:00+00:00").timestamp()
    assert after["window_start"] == boundary and after["bad_events"] == 0 and after["events"] == 60


def test_low_traffic_guard_and_no_data_alert():
    slo = checkout_slo(tiers=(BurnTier("page", 3600, 300, 14.4),), min_events=100, no_data_s=120)
    feed = Feed(slo_processor(slo))
    for t in range(0, 500, 10):  # 50 events, all bad: burn is huge but the long window is thin
        feed.send(T0 + t, False)
    assert feed.times("firing", "page") == []
    assert feed.proc.slos.trackers["co"].status["tiers"][0]["low_traffic"] is True
    feed.send(T0 + 700, True, metric="other")  # another series moves on: checkout's clock does not
    assert feed.times("firing", "ticket") == []
    # Checkout stays quiet: after idle_after_s (5 s) of wall time its clock runs on at wall speed.
    assert feed.proc.tick(WALL + 100.0).alerts == []  # 95 s on: not yet silent for 120 s
    feed.alerts.extend(event for _, event in feed.proc.tick(WALL + 200.0).alerts)
    assert feed.times("firing", "ticket") and feed.alerts[-1]["data"]["labels"]["alertname"] == "SLONoData"


def test_state_round_trip_keeps_counts_and_alerts_without_repeats():
    slo = checkout_slo(tiers=(BurnTier("page", 3600, 300, 14.4),))
    config = make_config(slos=(slo,), grace_s=2)
    feed = Feed(PartitionProcessor(0, config, now=WALL))
    for t in range(0, 3600):
        feed.send(T0 + t, True)
    for t in range(3600, 3700):
        feed.send(T0 + t, False)
    assert len(feed.times("firing", "page")) == 1
    writes = list(feed.proc.checkpoint()[0])
    restored = PartitionProcessor.restore(0, config, writes, now=WALL)
    feed.proc = restored
    for t in range(3700, 3720):
        feed.send(T0 + t, False)
    assert len(feed.times("firing", "page")) == 1
    assert restored.slos.trackers["co"].evaluate(T0 + 3719)[0]["bad_events"] == 120
    # A changed good rule invalidates the stored counts instead of misreading them.
    changed = make_config(slos=(checkout_slo(good=GoodRule("value_le", 1.0)),), grace_s=2)
    fresh = PartitionProcessor.restore(0, changed, writes, now=WALL).slos.trackers["co"]
    assert fresh.counts(T0, T0 + 4000) == (0.0, 0.0)


def test_a_backlog_in_one_batch_fires_when_it_would_have_live_with_the_same_event_id():
    slo = checkout_slo(tiers=(BurnTier("page", 3600, 300, 14.4),))
    live = Feed(slo_processor(slo))
    docs = [(T0 + t, t < 3600) for t in range(3700)]
    for ts, ok in docs:
        live.send(ts, ok)
    backlog = slo_processor(slo)
    records = [SourceRecord("m", 0, i, ts, b"checkout", orjson.dumps({"service": "checkout", "metric": "http",
                                                                       "ts": ts, "ok": ok}))
               for i, (ts, ok) in enumerate(docs)]
    out = backlog.process(records, WALL)
    fired = [e for _, e in out.alerts if e["type"] == "slostream.alert.firing"]
    assert len(fired) == 1
    assert [e["id"] for e in live.alerts] == [fired[0]["id"]]


def test_an_slo_whose_series_was_evicted_still_raises_its_no_data_alert_after_a_restart():
    slo = checkout_slo(tiers=(BurnTier("page", 3600, 300, 14.4),), no_data_s=600)
    config = make_config(slos=(slo,), grace_s=2, series_ttl_s=120)
    feed = Feed(PartitionProcessor(0, config, now=WALL))
    for t in range(0, 300, 10):
        feed.send(T0 + t, True)
    store: dict[str, bytes | None] = {}
    for now in range(30, 300, 30):  # quiet: after idle_after_s its clock runs at wall speed
        feed.alerts.extend(event for _, event in feed.proc.tick(WALL + now).alerts)
        store.update(feed.proc.checkpoint()[0])
    assert ("checkout", "http") not in feed.proc.series  # evicted after 120 s of quiet
    header_key = next(key for key in store if key.startswith(series_key(0, "")))
    assert store[header_key] is None  # a tombstone deletes its state
    assert feed.times("firing", "ticket") == []  # silent for less than 600 s so far
    restored = PartitionProcessor.restore(0, config, store.items(), now=WALL + 300.0)
    assert restored.series == {} and ("checkout", "http") in restored.slos.idle_clocks
    fired = [event for now in range(330, 1200, 30) for _, event in restored.tick(WALL + now).alerts]
    assert [e["data"]["labels"]["alertname"] for e in fired if e["type"] == "slostream.alert.firing"] == ["SLONoData"]


def test_pipeline_state_holds_no_reference_cycles():
    """The worker keeps its state out of the cyclic garbage collector (``io.ingest.keep_out_of_gc``):
    that frees nothing late only if state dies by reference counting alone."""
    config = make_config(slos=(checkout_slo(),), policies=(Policy("p99", "checkout", "http", "p99", 60, "above", 300.0,
                                                             500.0),), grace_s=2, series_ttl_s=100)
    gc.collect()
    gc.disable()
    try:
        proc = PartitionProcessor(0, config, now=WALL)
        for step in range(400):
            items = [{"service": "checkout", "metric": "http", "value": 100.0 + i, "ok": i % 7 != 0,
                      "ts": T0 + step * 5 + i % 5, "labels": {"host": f"h{i % 3}"}} for i in range(20)]
            proc.process([SourceRecord("m", 0, step, T0 + 3000, None, orjson.dumps(items))], now=WALL + step)
            if step % 20 == 0:
                deque(proc.checkpoint()[0], maxlen=0)
        for now in range(400, 1000, 50):  # quiet: windows close, the series are evicted
            proc.tick(WALL + now)
        deque(proc.checkpoint()[0], maxlen=0)
        assert proc.series == {} and proc.alerting.book is not None
        assert gc.collect() == 0
        del proc
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_an_slo_fed_by_label_split_series_judges_as_one_unsplit_series_would():
    """Three regions are three series (label_keys), all feeding one SLO: its counts, status and alerts
    are those of the same measurements as one series, batched alike."""
    rng = np.random.default_rng(8)
    items = []
    for step in range(720):  # an hour; the eu region fails hard in its last quarter
        for region in ("eu", "us", "ap"):
            failing = region == "eu" and step >= 540
            items += [{"service": "checkout", "metric": "http", "ok": bool(rng.random() > (0.5 if failing else 0.0005)),
                       "ts": T0 + step * 5 + i, "labels": {"region": region, "pod": f"p{i}"}} for i in range(3)]
    runs = {}
    for label_keys in (("region",), ()):
        proc = slo_processor(checkout_slo(), label_keys=label_keys)
        alerts = []
        for n, first in enumerate(range(0, len(items), 450)):
            chunk = items[first:first + 450]
            out = proc.process([SourceRecord("m", 0, n, chunk[-1]["ts"], None, orjson.dumps(chunk))], now=WALL + n)
            alerts += [(e["type"], e["data"]["labels"]["severity"], e["time"]) for _, e in out.alerts]
        status = proc.slos.trackers["co"].status
        runs[label_keys] = (len(proc.series), proc.slos.trackers["co"].sources, alerts,
                            {k: v for k, v in status.items() if k != "tiers"}, status["tiers"])
    split, whole = runs[("region",)], runs[()]
    assert split[:2] == (3, 3) and whole[:2] == (1, 1)
    assert split[2] and split[2] == whole[2]  # the page fired, at the same time
    assert split[3:] == whole[3:]


def test_a_series_hours_behind_another_of_its_slo_is_counted_as_too_old_not_a_crash():
    """Two hosts feed one SLO in one partition; one sends three hours after the other has moved on.
    Its buckets are older than the SLO's base ring: they are counted in ``too_old_measurements``
    (its own SLI windows still have them), and nothing raises."""
    proc = slo_processor(checkout_slo(), label_keys=("host",))
    offset = 0

    def minute(host: str, start: float) -> SourceRecord:
        nonlocal offset
        items = [{"service": "checkout", "metric": "http", "ok": True, "ts": start + s, "labels": {"host": host}}
                 for s in range(0, 60, 10)]
        offset += 1
        return SourceRecord("m", 0, offset, start + 60, None, orjson.dumps(items))

    for m in range(180):
        proc.process([minute("a", T0 + 3 * 3600 + m * 60)], WALL)
    sli_b = 0
    for m in range(30):
        sli_b += sum(1 for _, e in proc.process([minute("b", T0 + m * 60)], WALL).sli
                     if e["data"]["labels"] == {"host": "b"})
    proc.tick(WALL + 60)
    tracker = proc.slos.trackers["co"]
    assert tracker.too_old == 30 * 6
    assert sli_b >= 25  # host b's own windows are reported
    restored = PartitionProcessor.restore(0, proc.config, list(proc.checkpoint(final=True)[0]), now=WALL)
    assert restored.slos.trackers["co"].too_old == 30 * 6

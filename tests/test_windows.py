import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slostream.core.buckets import COUNT, OK, OK_KNOWN, Resolution, check_resolutions
from slostream.core.windows import SeriesWindows

T0 = 1_700_000_000 // 86400 * 86400  # a UTC midnight, so every level aligns


def _stream(n: int, span: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.uniform(0, span, n))
    values = rng.lognormal(3.0, 0.7, n)
    values[rng.random(n) < 0.1] = np.nan  # some measurements carry only ok
    oks = rng.choice(np.array([-1, 0, 1], dtype=np.int8), n, p=[0.1, 0.05, 0.85])
    oks[np.isnan(values)] = 1
    return ts, values, oks


def _feed(windows: SeriesWindows, ts, values, oks):
    width = windows.base_width
    starts = (ts // width * width).astype(np.int64)
    for start in np.unique(starts):
        sel = starts == start
        windows.add(int(start), values[sel], oks[sel])
        windows.close_until(start + width)


def _brute(ts, values, oks, lo, hi):
    sel = (ts >= lo) & (ts < hi)
    v = values[sel]
    v = v[~np.isnan(v)]
    return {"count": int(sel.sum()), "ok": int((oks[sel] == 1).sum()),
            "errors": int((oks[sel] == 0).sum()), "values": v}


@pytest.mark.parametrize("span_s", [300, 1800, 3600, 6 * 3600, 86400, 3 * 86400])
def test_rolling_counts_are_exact_at_every_resolution(span_s):
    ts, values, oks = _stream(40_000, 3 * 86400 + 3600, seed=span_s)
    windows = SeriesWindows()
    _feed(windows, ts, values, oks)
    # Exact to the width of the level that answers the span (10 s, 1 min, 10 min).
    answering_width = 10 if span_s <= 600 else 60 if span_s <= 6 * 3600 else 600
    end = windows.closed_until // answering_width * answering_width
    agg = windows.aggregate(end - span_s, end, with_sketch=False)
    truth = _brute(ts, values, oks, end - span_s, end)
    assert (agg.count, agg.ok, agg.errors) == (truth["count"], truth["ok"], truth["errors"])
    if truth["values"].size:
        assert agg.max == truth["values"].max() and agg.min == truth["values"].min()
        assert agg.mean == pytest.approx(truth["values"].mean(), rel=1e-9)


def test_edge_beyond_every_finer_level_rounds_out_by_at_most_one_bucket():
    ts, values, oks = _stream(40_000, 4 * 86400)
    windows = SeriesWindows()
    _feed(windows, ts, values, oks)
    end = windows.closed_until
    lo = end - 4 * 86400 + 5  # older than the 10-minute level holds: answered hourly
    agg = windows.aggregate(lo, end, with_sketch=False)
    assert _brute(ts, values, oks, lo, end)["count"] <= agg.count
    assert agg.count <= _brute(ts, values, oks, lo // 3600 * 3600, end)["count"]


def test_thirty_day_span_uses_hourly_buckets_exactly():
    windows = SeriesWindows()
    rng = np.random.default_rng(5)
    total = ok = 0
    for hour in range(31 * 24):
        start = T0 + hour * 3600
        n = int(rng.integers(1, 20))
        oks = (rng.random(n) > 0.2).astype(np.int8)
        windows.add(start, rng.lognormal(3, 1, n), oks)
        windows.close_until(start + 10)
        if hour >= 24:
            total += n
            ok += int(oks.sum())
    end = T0 + 31 * 24 * 3600
    agg = windows.aggregate(end - 30 * 86400, end, with_sketch=False)
    assert (agg.count, agg.ok) == (total, ok)


def test_quantiles_of_a_window_match_numpy():
    ts, values, oks = _stream(60_000, 3600)
    windows = SeriesWindows()
    _feed(windows, ts, values, oks)
    lo, hi = T0 + 600, T0 + 1800
    agg = windows.aggregate(lo, hi)
    present = _brute(ts, values, oks, lo, hi)["values"]
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = np.quantile(present, q, method="lower")
        assert agg.quantile(q) == pytest.approx(exact, rel=0.01)


def test_span_beyond_sketch_levels_reports_no_quantiles():
    ts, values, oks = _stream(5_000, 86400)
    windows = SeriesWindows()
    _feed(windows, ts, values, oks)
    end = T0 + 86400
    windows.close_until(end)
    agg = windows.aggregate(end - 86400, end)
    assert agg.count > 0 and agg.quantile(0.5) is None


def test_state_round_trip_preserves_every_answer():
    ts, values, oks = _stream(20_000, 7200)
    windows = SeriesWindows()
    _feed(windows, ts[:-100], values[:-100], oks[:-100])
    restored = SeriesWindows.from_state(windows.to_state())
    end = windows.closed_until
    for span in (300, 3600):
        a, b = windows.aggregate(end - span, end), restored.aggregate(end - span, end)
        assert np.array_equal(a.stats, b.stats)
        assert a.quantile(0.99) == b.quantile(0.99)
    assert restored.open_starts == windows.open_starts


def test_counts_stay_bounded_in_memory():
    windows = SeriesWindows()
    rng = np.random.default_rng(0)
    sizes = []
    for step in range(0, 8 * 3600, 10):
        windows.add(T0 + step, rng.lognormal(4, 0.6, 20), np.ones(20, dtype=np.int8))
        windows.close_until(T0 + step + 10)
        if step in (6 * 3600, 8 * 3600 - 10):
            sizes.append(windows.nbytes())
    assert sizes[1] <= sizes[0] * 1.05  # steady state after the sketch levels fill


def test_bad_resolutions_are_refused():
    with pytest.raises(ValueError):
        check_resolutions((Resolution(10, 6), Resolution(15, 4)))
    assert COUNT == 0 and OK_KNOWN == 1 and OK == 2


def test_an_open_bucket_a_whole_ring_ahead_of_another_is_spilled_not_closed():
    w = SeriesWindows()
    ring = w.levels[0].width * w.levels[0].slots
    w.add(0, np.array([1.0, 2.0]), np.array([1, 0], dtype=np.int8))
    w.add(ring, np.array([5.0]), np.array([1], dtype=np.int8))  # same base slot as bucket 0
    w.add(0, np.array([3.0]), np.array([1], dtype=np.int8))  # bucket 0 still takes measurements
    assert w.closed_until == 0 and set(w.spilled) == {ring}
    assert w.close_until(10) == [0] and w.aggregate(0, 10).count == 3
    assert w.close_until(ring + 10) == [ring] and not w.spilled
    assert w.aggregate(ring, ring + 10).count == 1 and w.aggregate(ring, ring + 10).quantile(0.5) == 5.0


def _persist(changelog: dict, windows: SeriesWindows) -> None:
    """What a checkpoint writes: the changed slots (None deletes one), then the header."""
    for level, slot, state in windows.drain_dirty():
        if state is None:
            changelog.pop((level, slot), None)
        else:
            changelog[level, slot] = state
    changelog["header"] = windows.header_state()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 3700 - 1), st.floats(0.001, 1e6), st.sampled_from([-1, 0, 1])),
                min_size=1, max_size=300),
       st.integers(0, 3 * 3700), st.integers(0, 2**32 - 1))
def test_a_watermark_held_back_any_span_loses_no_measurement(events, held_until, seed):
    """Measurements arrive in any order over three base rings while the watermark waits at
    ``held_until``; the state is persisted and restored on the way. Once all is closed, every
    level's buckets hold exactly the measurements inside them."""
    rng = np.random.default_rng(seed)
    windows, changelog = SeriesWindows(), {}
    order = rng.permutation(len(events))
    to_come = np.minimum.accumulate(np.array([events[i][0] for i in order])[::-1])[::-1]
    for n, i in enumerate(order.tolist()):
        t, value, ok = events[i]
        windows.add(T0 + t // 10 * 10, np.array([value]), np.array([ok], dtype=np.int8), np.array([n]))
        if n + 1 < len(order):  # never past what is still to come
            windows.close_until(T0 + min(held_until, int(to_come[n + 1])) // 10 * 10)
        if rng.random() < 0.1:
            _persist(changelog, windows)
            slots = [(level, slot, state) for (level, slot), state in
                     ((k, v) for k, v in changelog.items() if k != "header")]
            windows = SeriesWindows.from_states(changelog["header"], slots)
    windows.close_until(T0 + 3 * 3700 + 10)
    ts = np.array([T0 + t for t, _, _ in events], dtype=float)
    oks = np.array([ok for _, _, ok in events])
    for level in windows.levels:
        for slot in np.flatnonzero(level.starts >= 0).tolist():
            start = int(level.starts[slot])
            inside = (ts >= start) & (ts < start + level.width)
            assert level.stats[slot, COUNT] == inside.sum()
            assert level.stats[slot, OK] == (inside & (oks == 1)).sum()
    assert windows.totals(T0 - 86400, T0 + 3 * 3700 + 10)[COUNT] == len(events)


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_totals_equal_a_brute_force_sum_over_the_span_rounded_out(seed):
    """Any closed span, old or recent: its start rounded down, its end up, at the finest level that
    still holds them; the counts are exactly those of every measurement in between."""
    rng = np.random.default_rng(seed)
    windows, counts, t, checked = SeriesWindows(), {}, 0, 0
    for _ in range(20_000):
        t += int(rng.choice([60, 600, 3600])) if rng.random() < 0.05 else 10
        n = int(rng.integers(0, 4))
        if n:
            windows.add(t, rng.random(n), rng.integers(0, 2, n).astype(np.int8))
            counts[t] = counts.get(t, 0) + n
        if rng.random() < 0.3:
            windows.close_until(t - int(rng.integers(0, 40)))
        if rng.random() < 0.01 and windows.closed_until:
            hi = int(rng.integers(1, windows.closed_until // 10 + 1)) * 10
            lo = int(rng.integers(0, hi // 10)) * 10
            (_, start), (_, end) = windows._answering_level(lo), windows._answering_end(hi)
            assert start <= lo and end >= hi
            assert windows.closed_totals(lo, hi)[COUNT] == sum(c for s, c in counts.items() if start <= s < end)
            checked += 1
    assert checked > 100

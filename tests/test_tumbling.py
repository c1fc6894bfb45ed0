"""Tumbling windows against a brute-force count of the same measurements."""

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slostream.core.sketch import QuantileSketch
from slostream.core.store_reads import MAX_READS
from slostream.core.tumbling import TumblingWindows
from slostream.core.window_store import WindowStore
from slostream.core.windows import SeriesWindows

WIDTH = 10
LENGTHS = {60: True, 300: False, 3600: True}


def _brute(items, start, end):
    chosen = [(v, ok) for ts, v, ok in items if start <= ts < end]
    values = np.array([v for v, _ in chosen])
    oks = [ok for _, ok in chosen]
    return len(chosen), sum(o == 1 for o in oks), sum(o == 0 for o in oks), values


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 7200), st.floats(0.1, 1e4), st.sampled_from([1, 0, -1])), min_size=1,
             max_size=300),
    st.lists(st.integers(1, 900), min_size=1, max_size=30),
    st.integers(0, 29),
)
def test_every_completed_window_equals_a_brute_force_count(items, steps, restore_at):
    """Buckets arrive in time order with closes at random steps, a state round trip in the middle;
    each completed window holds exactly its measurements, and its quantiles are the sketch of them."""
    items.sort()
    windows = TumblingWindows(WIDTH, LENGTHS)
    completed = []
    watermark, position, step = 0, 0, 0
    while position < len(items) or watermark <= 7200 + 3600:
        watermark += steps[step % len(steps)]
        step += 1
        upto = position
        while upto < len(items) and items[upto][0] < (watermark // WIDTH) * WIDTH + WIDTH:
            upto += 1
        for ts, value, ok in items[position:upto]:
            start = ts // WIDTH * WIDTH
            if start >= windows.closed_until:
                windows.add(start, np.array([value]), np.array([ok], dtype=np.int8))
        position = upto
        completed += windows.close_until(watermark)
        if step == restore_at:
            windows = TumblingWindows.from_state(windows.to_state(), LENGTHS)
    seen = {(agg.start, agg.end - agg.start) for agg in completed}
    assert len(seen) == len(completed)  # each window handed out once
    for length in LENGTHS:
        starts = {ts // length * length for ts, _, _ in items}
        assert {s for s, n in seen if n == length} == starts  # every window with data, and only those
    for agg in completed:
        count, good, bad, values = _brute(items, agg.start, agg.end)
        assert (agg.count, agg.ok, agg.errors) == (count, good, bad)
        assert agg.max == pytest.approx(values.max()) and agg.min == pytest.approx(values.min())
        assert agg.mean == pytest.approx(values.mean())
        if LENGTHS[agg.end - agg.start]:
            direct = QuantileSketch()
            direct.add_values(values)
            for q in (0.5, 0.99):
                expected = min(max(direct.quantile(q), values.min()), values.max())
                assert agg.quantile(q) == pytest.approx(expected, rel=1e-9)
        else:
            assert agg.sketch is None  # no reader of this length asks for quantiles


def test_an_open_bucket_skips_offsets_it_holds():
    windows = TumblingWindows(WIDTH, {60: True})
    values, oks = np.arange(1.0, 6.0), np.ones(5, dtype=np.int8)
    assert windows.add(0, values, oks, np.arange(5)) == 5
    assert windows.add(0, values, oks, np.arange(5)) == 0  # replayed
    assert windows.add(0, values, oks, np.arange(3, 8)) == 3  # partly replayed
    assert windows.close_until(60)[0].count == 8


def test_the_replay_mark_spans_buckets_and_windows():
    windows = TumblingWindows(WIDTH, {60: True})
    assert windows.add(50, np.array([1.0, 2.0]), np.ones(2, dtype=np.int8), np.array([7, 8])) == 2
    assert windows.add(60, np.array([3.0]), np.ones(1, dtype=np.int8), np.array([8])) == 0  # held in another window
    assert windows.add(60, np.array([3.0]), np.ones(1, dtype=np.int8), np.array([9])) == 1


@pytest.mark.parametrize("through_json", [False, True])
def test_a_window_without_values_restores_its_empty_min_and_max(through_json):
    """A count-only window's empty min and max must not come back as NaN: neither from the binary
    state nor from a version 2 state (JSON, which has no infinity: they were written as null)."""
    windows = TumblingWindows(WIDTH, {60: True})
    windows.add(0, np.array([np.nan]), np.ones(1, dtype=np.int8))
    state = windows.to_state()
    if through_json:
        state = orjson.loads(orjson.dumps({"v": 2, "width": WIDTH, "accuracy": 0.01, "closed_until": 0, "mark": -1,
                                           "open": [[60, 0, [1, 1, 1, 0, 0.0, None, None], None]]}))
    restored = TumblingWindows.from_state(state, {60: True})
    restored.add(10, np.array([5.0]), np.ones(1, dtype=np.int8))
    done = restored.close_until(60)[0]
    assert (done.count, done.min, done.max) == (2, 5.0, 5.0)


def test_a_closed_bucket_refuses_measurements():
    windows = TumblingWindows(WIDTH, {60: True})
    windows.add(0, np.array([1.0]), np.array([1], dtype=np.int8))
    windows.close_until(20)
    with pytest.raises(ValueError, match="closed"):
        windows.add(10, np.array([1.0]), np.array([1], dtype=np.int8))


def test_unknown_state_version_is_refused():
    state = TumblingWindows(WIDTH, {60: True}).to_state()
    with pytest.raises(ValueError, match="version 99"):
        TumblingWindows.from_state((99).to_bytes(2, "little") + state[2:], {60: True})
    with pytest.raises(ValueError, match="version 99"):
        TumblingWindows.from_state({"v": 99}, {60: True})


def test_a_length_no_longer_read_is_dropped_and_a_new_one_starts_empty():
    windows = TumblingWindows(WIDTH, {60: True, 300: False})
    windows.add(0, np.array([1.0]), np.array([1], dtype=np.int8))
    windows.close_until(30)
    restored = TumblingWindows.from_state(windows.to_state(), {60: True, 600: True})
    windows_done = restored.close_until(600)
    assert [(a.start, a.end) for a in windows_done] == [(0, 60)]


def test_ring_state_migrates_to_the_same_windows():
    """A series persisted as ring buckets (state version 3) completes the same windows after migration."""
    rng = np.random.default_rng(5)
    ring = SeriesWindows()
    items = []
    for start in range(0, 330, WIDTH):
        values = rng.lognormal(4.0, 0.6, 20)
        oks = rng.integers(0, 2, 20).astype(np.int8)
        ring.add(start, values, oks, np.arange(20) + start * 100)
        items += [(start + 1, v, o) for v, o in zip(values, oks)]
    ring.close_until(290)  # 290..330 still open
    migrated = TumblingWindows.from_ring(SeriesWindows.from_state(orjson.loads(orjson.dumps(ring.to_state()))),
                                         {60: True, 300: False})
    assert migrated.mark == 320 * 100 + 19  # the newest open bucket's mark
    assert migrated.add(320, np.array([1.0]), np.ones(1, dtype=np.int8), np.array([320 * 100 + 19])) == 0
    done = migrated.close_until(360)
    assert [(a.start, a.end) for a in done] == [(240, 300), (0, 300), (300, 360)]
    for agg in done:
        count, good, bad, values = _brute(items, agg.start, agg.end)
        assert (agg.count, agg.ok, agg.errors) == (count, good, bad)
        if agg.end - agg.start == 60:
            direct = QuantileSketch()
            direct.add_values(values)
            assert agg.quantile(0.9) == pytest.approx(min(max(direct.quantile(0.9), values.min()), values.max()))


def _sketch_state(values):
    sketch = QuantileSketch()
    sketch.add_values(np.array(values))
    return sketch.to_state()


def _stats(values, oks):
    return [len(values), sum(o >= 0 for o in oks), sum(o == 1 for o in oks), len(values), sum(values), min(values),
            max(values)]


def test_version_1_state_folds_its_open_buckets_into_the_windows():
    """Version 1 kept open base buckets (each with a replay mark) apart from partial windows."""
    v1 = {
        "v": 1, "width": WIDTH, "accuracy": 0.01, "closed_until": 40,
        "open": [[40, [_stats([4.0], [1]), _sketch_state([4.0]), 12]],
                 [50, [_stats([5.0, 6.0], [0, 1]), _sketch_state([5.0, 6.0]), 15]]],
        "partial": [[60, 0, [_stats([1.0, 2.0, 3.0], [1, 1, 1]), _sketch_state([1.0, 2.0, 3.0]), -1]],
                    [300, 0, [_stats([1.0, 2.0, 3.0], [1, 1, 1]), None, -1]]],
    }
    windows = TumblingWindows.from_state(orjson.loads(orjson.dumps(v1)), {60: True, 300: False})
    assert windows.mark == 15
    done = windows.close_until(300)
    assert [(a.start, a.end, a.count, a.errors) for a in done] == [(0, 60, 6, 1), (0, 300, 6, 1)]
    assert done[0].quantile(1.0) == pytest.approx(6.0, rel=0.01) and done[1].sketch is None


def test_a_restore_into_a_store_of_another_accuracy_keeps_counts_and_drops_sketches():
    """The accuracy setting changed across a restart: the keys of the old sketches mean other values."""
    old = TumblingWindows(WIDTH, {60: True}, relative_accuracy=0.02)
    old.add(0, np.array([100.0, 200.0]), np.ones(2, dtype=np.int8))
    store = WindowStore(WIDTH, 0.01)
    restored = TumblingWindows.from_state(old.to_state(), {60: True}, store)
    restored.add(10, np.array([50.0]), np.ones(1, dtype=np.int8))
    done = restored.close_until(60)[0]
    assert (done.count, done.min, done.max) == (3, 50.0, 200.0)
    assert done.quantile(0.5) == pytest.approx(50.0, rel=0.01)  # only what arrived after the restore


def test_many_owners_in_one_store_each_complete_their_own_windows_exactly():
    """Owners of two profiles share a store: sparse ones (keys in the shared log), dense ones (past
    the log, into sketches) and ones with zero and negative values; batches mix owners, each owner
    closes at its own pace, and the whole store goes through a state round trip half way."""
    rng = np.random.default_rng(3)
    profiles = [{60: True}, {60: True, 300: False}]
    store = WindowStore(WIDTH)
    owners = [TumblingWindows(WIDTH, profiles[i % 2], store=store) for i in range(40)]
    items = {i: [] for i in range(40)}
    completed = {i: [] for i in range(40)}
    for step in range(60):  # 10 s of event time per step
        batch_owners, batch_starts, batch_values = [], [], []
        for i, windows in enumerate(owners):
            n = 40 if i % 5 == 0 else int(rng.integers(0, 3))  # every fifth owner is dense
            values = rng.lognormal(3.0, 1.0, n)
            if i % 7 == 3:
                values[: n // 2] -= 30.0  # zeros and negatives turn a window's keys into bins
            items[i] += [(step * WIDTH, v) for v in values]
            batch_owners += [windows.owner] * n
            batch_starts += [step * WIDTH] * n
            batch_values += values.tolist()
        store.add(np.array(batch_owners, dtype=np.int64), np.array(batch_starts, dtype=np.int64),
                  np.array(batch_values), np.ones(len(batch_values), dtype=np.int8))
        marks = np.array([step * WIDTH - rng.integers(0, 40) for _ in owners], dtype=np.float64)
        closed = store.close(np.array([w.owner for w in owners], dtype=np.int64), marks, (0.5, 0.99))
        for k in range(len(closed)):
            i = [w.owner for w in owners].index(int(closed.owners[k]))
            completed[i].append((closed.aggregate(k), closed.quantiles[k]))
        if step == 30:
            states = store.encode(np.array([w.owner for w in owners]))
            store = WindowStore(WIDTH)
            owners = [TumblingWindows.from_state(state, profiles[i % 2], store)
                      for i, state in enumerate(states)]
    for i, windows in enumerate(owners):
        for agg, quantiles in completed[i]:
            values = np.array([v for ts, v in items[i] if agg.start <= ts < agg.end])
            assert agg.count == len(values) and agg.max == pytest.approx(values.max())
            if agg.end - agg.start == 60:
                direct = QuantileSketch()
                direct.add_values(values)
                for q, got in zip((0.5, 0.99), quantiles):
                    assert got == pytest.approx(min(max(direct.quantile(q), values.min()), values.max()), rel=1e-9)
            else:
                assert agg.sketch is None and np.isnan(quantiles).all()
        assert {agg.start for agg, _ in completed[i] if agg.end - agg.start == 60} == \
            {ts // 60 * 60 for ts, _ in items[i] if ts // 60 * 60 + 60 <= windows.closed_until}


def test_reads_awaiting_alignment_follow_a_list_per_owner():
    """``note_reads`` and ``release_reads`` over many owners at once against one list per owner: a
    read noted at the same time as the owner's last merges into it, past ``MAX_READS`` the two oldest
    merge (the later time, the newer event time), and a release takes every read noted at or before
    it, whatever the order they were noted in, and only their own event times."""
    rng = np.random.default_rng(11)
    store = WindowStore(WIDTH)
    owners = np.array([store.new_owner({60: False}) for _ in range(30)])
    lists = {int(o): [] for o in owners}
    aligned = {int(o): -np.inf for o in owners}
    for _ in range(400):
        chosen = np.unique(rng.choice(owners, size=int(rng.integers(1, 30))))
        if rng.random() < 0.6:
            newest = rng.uniform(0, 1000, chosen.size)
            at = float(rng.integers(0, 50))  # not monotonic: reads of other partitions' records
            store.note_reads(chosen, at, newest)
            for owner, ts in zip(chosen.tolist(), newest.tolist()):
                reads = lists[owner]
                if reads and reads[-1][0] == at:
                    reads[-1][1] = max(reads[-1][1], ts)
                    continue
                if len(reads) == MAX_READS:
                    first, second = reads.pop(0), reads.pop(0)
                    reads.insert(0, [max(first[0], second[0]), max(first[1], second[1])])
                reads.append([at, ts])
        else:
            until = float(rng.integers(0, 50))
            got = store.release_reads(chosen, until)
            for owner, value in zip(chosen.tolist(), got.tolist()):
                reads = lists[owner]
                aligned[owner] = max([aligned[owner]] + [ts for at, ts in reads if at <= until])
                reads[:] = [[at, ts] for at, ts in reads if at > until]
                assert value == aligned[owner]
        for owner in owners.tolist():
            count = int(store.read_count[owner])
            assert [[a, t] for a, t in zip(store.read_at[owner, :count], store.read_ts[owner, :count])] == lists[owner]
    restored = WindowStore(WIDTH)
    for owner, blob in zip(owners.tolist(), store.encode(owners)):
        again = TumblingWindows.from_state(blob, {60: False}, restored).owner
        count = int(restored.read_count[again])
        noted = zip(restored.read_at[again, :count], restored.read_ts[again, :count])
        assert [[a, t] for a, t in noted] == lists[owner]
        assert restored.aligned_ts[again] == aligned[owner]

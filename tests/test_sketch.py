import numpy as np
import orjson
import pytest
from ddsketch import DDSketch

from slostream.core.sketch import SPARSE_KEYS, QuantileSketch

QS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def _data(kind: str, n: int = 200_000) -> np.ndarray:
    rng = np.random.default_rng(42)
    if kind == "lognormal":
        return rng.lognormal(4.0, 1.0, n)
    if kind == "pareto":
        return (rng.pareto(1.5, n) + 1.0) * 10.0
    if kind == "mixed_sign":
        return rng.normal(0.0, 50.0, n)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["lognormal", "pareto", "mixed_sign"])
def test_quantiles_within_one_percent_of_numpy(kind):
    values = _data(kind)
    sketch = QuantileSketch(0.01)
    sketch.add_values(values)
    for q in QS:
        exact = np.quantile(values, q, method="lower")  # DDSketch's rank rule: element floor(q*(n-1))
        got = sketch.quantile(q)
        assert abs(got - exact) <= 0.01 * abs(exact) + 1e-12, (q, got, exact)


def test_matches_reference_ddsketch():
    values = _data("pareto", 50_000)
    ours, reference = QuantileSketch(0.01, max_bins=100_000), DDSketch(0.01)
    ours.add_values(values)
    for v in values:
        reference.add(float(v))
    assert ours.count == reference.count
    for q in QS:
        assert ours.quantile(q) == pytest.approx(reference.get_quantile_value(q), rel=0.0201)


def test_small_positive_sketches_answer_exactly_as_ddsketch():
    """Sketches of positive values only (every latency window) take a vectorised path: it must give
    DDSketch's own bin values, not just values within the accuracy."""
    rng = np.random.default_rng(2)
    for _ in range(200):
        values = rng.lognormal(rng.uniform(-3, 6), rng.uniform(0.05, 2), rng.integers(1, 200))
        ours, reference = QuantileSketch(0.01), DDSketch(0.01)
        ours.add_values(values)
        for v in values:
            reference.add(float(v))
        expected = [reference.get_quantile_value(q) for q in (0.0, *QS, 1.0)]
        assert ours.quantiles((0.0, *QS, 1.0)) == pytest.approx(expected, rel=1e-12)


def test_merge_equals_sketch_of_union_and_is_order_free():
    values = _data("lognormal", 30_000)
    parts = np.array_split(values, 3)
    whole = QuantileSketch()
    whole.add_values(values)
    left, right = QuantileSketch(), QuantileSketch()
    left.add_values(parts[0])
    left.merge(_sketch(parts[1]))
    left.merge(_sketch(parts[2]))
    right.add_values(parts[2])
    right.merge(_sketch(parts[0]))
    right.merge(_sketch(parts[1]))
    for q in QS:
        assert left.quantile(q) == whole.quantile(q) == right.quantile(q)


@pytest.mark.parametrize("n", [1, 5, SPARSE_KEYS, SPARSE_KEYS + 1, 300])
def test_sparse_and_binned_sketches_agree_through_merges_and_round_trips(n):
    """Few positive values keep their keys; merges and state round trips, in any order and across
    the switch to bins, answer as one sketch of all the values."""
    values = np.random.default_rng(n).lognormal(3.0, 1.0, n)
    whole = _sketch(values)
    parts = [_sketch(part) for part in np.array_split(values, 3)]
    for order in ((0, 1, 2), (2, 0, 1)):
        merged = QuantileSketch.from_state(orjson.loads(orjson.dumps(parts[order[0]].to_state())))
        for i in order[1:]:
            merged.merge(QuantileSketch.from_state(orjson.loads(orjson.dumps(parts[i].to_state()))))
        assert merged.count == n
        assert merged.quantiles((0.0, *QS, 1.0)) == whole.quantiles((0.0, *QS, 1.0))
    binned = _sketch(np.concatenate([values, [0.0]]))  # a zero turns a sketch into bins
    binned.merge(whole)
    assert binned.count == 2 * n + 1


def test_state_round_trip_is_exact():
    sketch = _sketch(_data("mixed_sign", 10_000))
    restored = QuantileSketch.from_state(sketch.to_state())
    assert restored.to_state() == sketch.to_state()
    assert [restored.quantile(q) for q in QS] == [sketch.quantile(q) for q in QS]


def test_bins_are_bounded_and_high_quantiles_survive_collapse():
    values = np.geomspace(1e-6, 1e9, 100_000)
    sketch = QuantileSketch(0.01, max_bins=256)
    sketch.add_values(values)
    assert sketch.nbytes() <= 256 * 8 + 64
    assert sketch.quantile(0.99) == pytest.approx(np.quantile(values, 0.99, method="lower"), rel=0.01)


def test_empty_and_zero():
    sketch = QuantileSketch()
    assert sketch.quantile(0.5) is None
    sketch.add_values(np.zeros(5))
    assert sketch.quantile(0.5) == 0.0
    with pytest.raises(ValueError):
        QuantileSketch.from_state({**sketch.to_state(), "v": 99})


def _sketch(values):
    s = QuantileSketch()
    s.add_values(values)
    return s

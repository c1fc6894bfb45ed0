"""Issue 26, points 3, 4 and 7, on seeded series that break the threshold model's assumptions
(``bench.threshold_scenarios``): intervals that hold and are no wider than the naive baseline's,
trends that are not spurious, adaptive conformal inference that moves every day, a symmetric
error that counts a week with nothing crossed, and a fleet whose well-predicting models are not
flagged one in twenty."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from slostream.bench.threshold_scenarios import FAMILIES, Family, fleet_inaccurate, judge, series, summarise
from slostream.core.recommend import STRATEGIES, benjamini_hochberg, ready, score, valid_predictive
from slostream.core.threshold_model import LEVEL_NODES, ThresholdModel, p_value, rate_interval

HARD = ("day_level_sd10", "ar1_phi0.95", "incidents_1_to_3", "held_out_shift_down5")


def test_week_intervals_hold_on_families_that_break_the_models_assumptions():
    """Before: 47% covered with day-to-day levels of sd 10%, 0-40% after a 5-10% shift."""
    rows = [row for name in HARD for seed in range(8) for row in judge(FAMILIES[name], 900 + seed)]
    model = summarise([r for r in rows if r["who"] == "model"])
    naive = summarise([r for r in rows if r["who"] == "naive"])
    assert model["coverage"] >= 0.85, model
    # Not by being wide: a smaller interval score than the naive baseline's, on the same machinery.
    assert model["winkler_pp"] < naive["winkler_pp"], (model, naive)


def test_a_trend_is_kept_on_few_stationary_series_with_lasting_noise():
    """AR(1) with phi 0.9: a t-test of windows one by one kept a trend on 77-83% of them."""
    kept = []
    for seed in range(60):
        ends, p95 = series(Family(ar_phi=0.9, ar_sd=0.1), 500 + seed, weeks=4)
        model = ThresholdModel("above", 300)
        for end, value in zip(ends.tolist(), p95.tolist()):
            model.update(end, value)
        kept.append(model.fit().trend.slope != 0)
    assert np.mean(kept) <= 0.12, np.mean(kept)


class _Recorded(ThresholdModel):
    __slots__ = ("checks",)

    def recalibrate(self, covered: bool) -> None:
        self.checks.append(covered)
        super().recalibrate(covered)


def test_adaptive_conformal_inference_holds_long_run_coverage_over_26_weeks():
    """One-day checks, every day (before: at most 12 updates before a held-out week)."""
    checks = []
    for name in ("current_generator", "day_level_sd10", "ar1_phi0.95", "incidents_1_to_3"):
        model = _Recorded("above", 300)
        model.checks = []
        ends, p95 = series(FAMILIES[name], 26, weeks=26)
        for end, value in zip(ends.tolist(), p95.tolist()):
            model.update(end, value)
        assert len(model.checks) >= 26 * 7 - 3
        checks += model.checks
    assert 0.92 <= np.mean(checks) <= 0.98, np.mean(checks)


def test_a_week_with_nothing_crossed_has_a_log_error_and_p_values_are_uniform_under_the_prediction():
    """The relative error dropped a week with nothing crossed; the log error counts it. Counts drawn
    from a prediction's own predictive distribution give p-values no smaller than uniform ones."""
    rng = np.random.default_rng(6)
    rates = 0.02 * np.exp(0.1 * LEVEL_NODES)
    predictive = {"kind": "beta_binomial", "rates": rates.tolist(), "inflation": 5.0, "history_windows": 3400}
    low, high = rate_interval(rates, 5.0, 3400, 2016, 0.05)
    predicted = {"violation_rate": 0.02, "ci_low": low, "ci_high": high}
    nothing = score(predicted, 2016, 0, predictive)
    assert nothing["relative_error"] is None
    assert nothing["log_error"] == pytest.approx(math.log((0.02 + 1 / 2016) / (1 / 2016)))
    weights = np.polynomial.hermite_e.hermegauss(9)[1]
    drawn = rates[rng.choice(9, size=4000, p=weights / weights.sum())]
    effective = rng.binomial(round(2016 / 5), rng.beta(drawn * 680 + 0.5, (1 - drawn) * 680 + 0.5))
    p = np.array([score(predicted, 2016, int(k * 5), predictive)["p_value"] for k in effective])
    for level in (0.001, 0.01, 0.05, 0.2):
        assert np.mean(p <= level) <= level * 1.3 + 0.002, (level, np.mean(p <= level))
    assert np.mean(p <= 0.5) >= 0.4  # not everything is 1
    assert score(predicted, 2016, 200, predictive)["p_value"] < 1e-6  # a tenth of the week crossed


def test_benjamini_hochberg_rejects_what_the_step_up_procedure_does():
    """Against the procedure written out (Benjamini and Hochberg, 1995): the largest k with
    p_(k) <= q k / m, every p-value up to p_(k) rejected."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        m = int(rng.integers(1, 60))
        p = np.where(rng.random(m) < 0.2, rng.random(m) * 0.01, rng.random(m))
        ordered = np.sort(p)
        passing = [k for k in range(1, m + 1) if ordered[k - 1] <= 0.05 * k / m]
        expected = ordered[max(passing) - 1] if passing else 0.0
        assert benjamini_hochberg(p) == expected


@pytest.mark.slow
def test_of_a_thousand_stationary_series_at_most_one_percent_are_flagged_inaccurate():
    fleet = fleet_inaccurate(1000)
    assert fleet["series_flagged_share"] <= 0.01, fleet


def test_every_window_length_is_ready_after_the_strategys_span():
    """Hour-long windows: 168 a week, where balanced asked 1,008 (six weeks)."""
    for window_s in (10, 60, 300, 3600):
        model = ThresholdModel("above", window_s)
        values = stats.lognorm.rvs(0.2, scale=100, size=7 * 86400 // window_s, random_state=1)
        for i, value in enumerate(values.tolist()):
            model.update(1_699_833_600 + window_s * (i + 1), value)
        assert ready(model, STRATEGIES["balanced"], window_s) is None, window_s
        assert ready(model, STRATEGIES["conservative"], window_s) is not None


@pytest.mark.parametrize("rate, inflation, horizon", [(0.02, 3.0, 2016), (0.005, 1.0, 288), (0.4, 7.0, 60480)])
def test_the_interval_is_the_quantiles_of_its_mixture_by_simulation(rate, inflation, horizon):
    """Brute force: a level offset drawn from the nine Gauss-Hermite nodes by their weights (the
    normal they stand for), its rate, a rate from the Jeffreys posterior of the history's
    effective windows, then the horizon's effective count binomial."""
    rng = np.random.default_rng(8)
    rates = np.clip(rate * np.exp(0.3 * LEVEL_NODES), 0, 1)
    low, high = rate_interval(rates, inflation, 3400, horizon, 0.05)
    history_n, horizon_n = 3400 / inflation, round(horizon / inflation)
    draws = 400_000
    weights = np.polynomial.hermite_e.hermegauss(9)[1]
    drawn = rates[rng.choice(9, size=draws, p=weights / weights.sum())]
    posterior = rng.beta(drawn * history_n + 0.5, (1 - drawn) * history_n + 0.5)
    shares = rng.binomial(horizon_n, posterior) / horizon_n
    assert np.mean(shares < low) <= 0.025 + 0.004 and np.mean(shares <= low) >= 0.025 - 0.004
    assert np.mean(shares > high) <= 0.025 + 0.004 and np.mean(shares >= high) >= 0.025 - 0.004


def test_a_damaged_predictive_distribution_is_refused_at_a_restore():
    """What a careless writer of the changelog can leave in a pending recommendation: refused when
    read (the series starts afresh), never met first when its horizon is scored."""
    model = ThresholdModel("above", 300)
    ends, p95 = series(Family(), 3, weeks=2)
    for end, value in zip(ends.tolist(), p95.tolist()):
        model.update(end, value)
    good = model.predict(120.0, model.forecast(float(ends[-1]), 604800)).predictive
    assert valid_predictive(good)
    for damaged in ({**good, "kind": "other"}, {**good, "rates": good["rates"][:3]}, {**good, "inflation": 0.0},
                    {**good, "rates": [2.0] * 9}, {**good, "history_windows": "x"}, None, [good]):
        assert not valid_predictive(damaged), damaged


def test_p_values_stay_in_0_1_at_every_extreme():
    """Rates of 0 and 1, one window or a week of ten-second ones, nothing or everything crossed:
    Benjamini-Hochberg refuses any p-value outside [0, 1] (one rounded below 0 stopped a worker)."""
    for rate, inflation, history, windows in itertools.product(
            [0.0, 1e-6, 0.02, 0.9, 1 - 1e-6, 1.0], [1.0, 50.0], [10.0, 1e6], [1, 12, 2016, 60480]):
        rates = np.clip(rate * np.exp(0.2 * LEVEL_NODES), 0, 1)
        predictive = {"kind": "beta_binomial", "rates": rates.tolist(), "inflation": inflation,
                      "history_windows": history}
        for crossed in {0, 1, windows // 2, windows - 1, windows}:
            assert 0.0 <= p_value(predictive, windows, crossed) <= 1.0, (rate, inflation, history, windows, crossed)

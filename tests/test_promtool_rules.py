"""Fire and reset times agree with Prometheus evaluating Sloth-style rules (``promtool test rules``).

The same traffic is fed to slostream (one measurement a second) and given to
promtool as counters scraped every 10 s. For each time slostream fires or
resets, promtool must show the alert not firing one bucket (10 s) before and
firing one bucket after (the other way round for a reset).
"""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest
import yaml

from slostream.core.budget import default_tiers
from tests.slo_feed import T0, Feed, checkout_slo, slo_processor

OBJECTIVE = 0.999
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


def sloth_rules() -> dict:
    """Sloth's rules: one SLI error-ratio recording per window, then page and ticket alerts."""
    records = [{
        "record": f"slo:sli_error:ratio_rate{w}",
        "expr": f"sum(rate(http_errors_total[{w}])) / sum(rate(http_requests_total[{w}]))",
    } for w in WINDOWS]
    budget = 1 - OBJECTIVE
    tiers = default_tiers(30 * 86400)
    names = {3600: "1h", 300: "5m", 21600: "6h", 1800: "30m", 86400: "1d", 7200: "2h", 259200: "3d"}

    def condition(tier) -> str:
        return (f"(slo:sli_error:ratio_rate{names[tier.long_s]} > ({tier.burn_rate:.6g} * {budget:g}) and "
                f"slo:sli_error:ratio_rate{names[tier.short_s]} > ({tier.burn_rate:.6g} * {budget:g}))")

    alerts = []
    for severity in ("page", "ticket"):
        mine = [t for t in tiers if t.severity == severity]
        alerts.append({"alert": f"SLOBurn_{severity}", "expr": " or ".join(condition(t) for t in mine),
                       "labels": {"severity": severity}})
    # One group, so the alerts read this evaluation's recordings; across groups Prometheus adds
    # up to one evaluation interval of lag, which is an artefact of scheduling, not of the method.
    return {"groups": [{"name": "slo", "interval": "10s", "rules": records + alerts}]}


def run_scenario(errors_per_second) -> tuple[Feed, int]:
    """slostream's view: 1 request a second; ``errors_per_second(t)`` says whether second t failed."""
    feed = Feed(slo_processor(checkout_slo(objective=OBJECTIVE)))
    seconds = errors_per_second.duration
    for t in range(seconds):
        feed.send(T0 + t, not errors_per_second(t))
    return feed, seconds


def promtool_series(errors_per_second, seconds: int) -> list[dict]:
    requests, errors = [], []
    failed = 0
    for sample in range(seconds // 10 + 1):
        t = sample * 10
        requests.append(str(t))
        errors.append(str(failed))
        failed += sum(1 for s in range(t, t + 10) if errors_per_second(s))
    return [{"series": "http_requests_total", "values": " ".join(requests)},
            {"series": "http_errors_total", "values": " ".join(errors)}]


class Outage:
    def __init__(self, start: int, end: int, every: int, duration: int):
        self.start, self.end, self.every, self.duration = start, end, every, duration

    def __call__(self, t: int) -> bool:
        return self.start <= t < self.end and (t - self.start) % self.every == 0


def _grid_before(t: float) -> int:
    return int(math.floor((t - 10) / 10) * 10) - 10


def _grid_after(t: float) -> int:
    return int(math.ceil((t + 10) / 10) * 10)


@pytest.mark.slow
@pytest.mark.parametrize("outage", [
    # The page resets when neither the 5m nor the 30m short window holds: about 30 minutes after.
    Outage(start=7200, end=7800, every=1, duration=9900),    # total outage, 10 minutes
    Outage(start=7200, end=8400, every=10, duration=10500),  # 10% errors, 20 minutes
], ids=["total", "ten-percent"])
def test_fire_and_reset_times_match_promtool(tmp_path, outage):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup test installs Debian's prometheus package"
    feed, seconds = run_scenario(outage)
    fired = feed.times("firing", "page")
    resolved = feed.times("resolved", "page")
    assert len(fired) == 1 and len(resolved) == 1, feed.alerts
    checks = [
        (_grid_before(fired[0]), []), (_grid_after(fired[0]), [{"exp_labels": {"severity": "page"}}]),
        (_grid_before(resolved[0]), [{"exp_labels": {"severity": "page"}}]), (_grid_after(resolved[0]), []),
    ]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(sloth_rules()))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "10s",
        "tests": [{
            "interval": "10s",
            "input_series": promtool_series(outage, seconds),
            "alert_rule_test": [{"eval_time": f"{t}s", "alertname": "SLOBurn_page", "exp_alerts": exp}
                                for t, exp in checks],
        }],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, (f"slostream fired at {fired}, resolved at {resolved}\n"
                                    f"{result.stdout}\n{result.stderr}")


def test_the_comparison_can_fail(tmp_path):
    """A slostream time shifted by two buckets is caught by promtool."""
    outage = Outage(start=7200, end=7800, every=1, duration=8000)
    feed, seconds = run_scenario(outage)
    shifted = feed.times("firing", "page")[0] + 30
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(sloth_rules()))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "10s", "tests": [{
        "interval": "10s", "input_series": promtool_series(outage, seconds),
        "alert_rule_test": [{"eval_time": f"{_grid_before(shifted)}s", "alertname": "SLOBurn_page", "exp_alerts": []}],
    }]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([shutil.which("promtool"), "test", "rules", "test.yml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from slostream.core.objectives import GoodRule, Timeslices
from slostream.definitions.native import load_definition_file


def load_slo_file(path):
    definitions, problems = load_definition_file(path)
    return list(definitions.slos), problems

VALID = textwrap.dedent("""
    slos:
      - name: checkout-availability
        service: checkout
        metric: http
        objective: 0.999
        window: 30d
        good: ok
      - name: checkout-latency
        service: checkout
        metric: latency_ms
        objective: 0.99
        window: 28d
        good: {value_le: 300}
        budgeting: {timeslices: {slice: 1m, good_if_ratio_ge: 0.95}}
        alerting:
          tiers: default
          min_events: 100
      - name: search-monthly
        service: search
        metric: http
        objective: 0.995
        window: {calendar: month, timezone: Europe/Berlin}
        good: ok
        alerting:
          tiers:
            - {severity: page, long: 1h, short: 5m, burn_rate: 10}
""")


def _write(tmp_path, text, name="slos.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_issue_example_loads(tmp_path):
    slos, problems = load_slo_file(_write(tmp_path, VALID))
    assert problems == []
    availability, latency, monthly = slos
    assert availability.window.rolling_s == 30 * 86400 and availability.good == GoodRule("ok")
    assert [t.burn_rate for t in availability.tiers] == pytest.approx([14.4, 6, 3, 1])
    assert [t.burn_rate for t in latency.tiers] == pytest.approx([13.44, 5.6, 2.8, 28 / 30])
    assert latency.budgeting == Timeslices(60, 0.95) and latency.min_events == 100
    assert latency.good.flags(np.array([300.0, 300.1]), np.array([-1, 1], dtype=np.int8)).tolist() == [1, 0]
    assert monthly.window.calendar == "month" and monthly.window.timezone == "Europe/Berlin"
    assert [(t.severity, t.long_s, t.short_s, t.burn_rate) for t in monthly.tiers] == [("page", 3600, 300, 10.0)]


def test_every_problem_is_reported_with_file_document_and_field(tmp_path):
    path = _write(tmp_path, textwrap.dedent("""
        slos:
          - name: broken
            service: checkout
            objective: 1.5
            window: 30 days
            good: {value_below: 3}
            budgeting: {timeslices: {slice: 1m, good_if_ratio_ge: 2}}
            alerting:
              tiers:
                - {severity: pager, long: 5m, short: 1h, burn_rate: 14.4}
              min_events: -1
            colour: blue
          - name: broken
            service: a
            metric: b
            objective: 0.9
            window: {calendar: month, timezone: Mars/Olympus}
            good: ok
    """))
    slos, problems = load_slo_file(path)
    assert slos == []
    fields = {(p.document, p.field) for p in problems}
    assert fields >= {
        ("slo 'broken'", "metric"), ("slo 'broken'", "objective"), ("slo 'broken'", "window"),
        ("slo 'broken'", "good"), ("slo 'broken'", "budgeting.timeslices.good_if_ratio_ge"),
        ("slo 'broken'", "alerting.tiers[0].severity"), ("slo 'broken'", "alerting.tiers[0].short"),
        ("slo 'broken'", "alerting.min_events"), ("slo 'broken'", "colour"), ("slo 'broken'", "window.timezone"),
    }
    assert all(str(p).startswith(f"{path}: slo 'broken': field '") and "Fix:" in str(p) for p in problems)


def test_duplicate_names_and_missing_section(tmp_path):
    text = VALID + "  - {name: checkout-availability, service: x, metric: y, objective: 0.9, window: 7d, good: ok}\n"
    _, problems = load_slo_file(_write(tmp_path, text))
    assert [(p.document, p.field) for p in problems] == [("slo 'checkout-availability'", "name")]
    _, problems = load_slo_file(_write(tmp_path, "objectives: []\n", "other.yaml"))
    assert problems[0].field == "slos"


def test_validate_command_exit_codes(tmp_path):
    good = _write(tmp_path, VALID)
    bad = _write(tmp_path, "slos:\n  - {name: x, service: s, metric: m, objective: 2, window: 1d, good: ok}\n",
                 "bad.yaml")
    ok = subprocess.run([sys.executable, "-m", "slostream", "validate", good], capture_output=True, text=True)
    assert ok.returncode == 0 and "3 SLO(s) and 0 policies valid" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "slostream", "validate", good, bad], capture_output=True, text=True)
    assert failed.returncode == 1 and f"{bad}: slo 'x': field 'objective'" in failed.stderr

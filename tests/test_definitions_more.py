"""OpenSLO v1 loading, threshold-policy validation, control commands and escalation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from slostream.config import ConfigError, load_settings
from slostream.core.alerts import AlertBook, Condition
from slostream.core.control import CommandError, parse_command
from slostream.core.objectives import GoodRule, Timeslices
from slostream.definitions.native import load_definition_file

OPENSLO = textwrap.dedent("""
    apiVersion: openslo/v1
    kind: SLI
    metadata: {name: checkout-latency-sli}
    spec:
      thresholdMetric:
        metricSource: {type: slostream, spec: {service: checkout, metric: latency_ms}}
    ---
    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: checkout-latency}
    spec:
      service: checkout
      indicatorRef: checkout-latency-sli
      timeWindow: [{duration: 28d, isRolling: true}]
      budgetingMethod: Timeslices
      objectives:
        - {displayName: fast, op: lte, value: 300, target: 0.99, timeSliceTarget: 0.95, timeSliceWindow: 1m}
    ---
    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: checkout-availability}
    spec:
      service: checkout
      indicator:
        metadata: {name: availability}
        spec:
          ratioMetric:
            counter: true
            good: {metricSource: {type: slostream, spec: {service: checkout, metric: http}}}
            total: {metricSource: {type: slostream, spec: {service: checkout, metric: http}}}
      timeWindow:
        - {duration: 1M, isRolling: false, calendar: {startTime: "2022-01-01 00:00:00", timeZone: Europe/Berlin}}
      budgetingMethod: Occurrences
      objectives: [{target: 0.999}]
    ---
    apiVersion: openslo/v1
    kind: Service
    metadata: {name: checkout}
    spec: {description: ignored kind}
""")

# The OpenSLO repository's examples/budgeting-method/timeslices-slo.yaml, reduced to the parts
# that matter: an objective with `op` on a ratioMetric, which the spec reserves for thresholdMetric.
PUBLIC_EXAMPLE_WITH_OP_ON_RATIO = textwrap.dedent("""
    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: service-availability}
    spec:
      service: web-availability
      indicator:
        metadata: {name: web-availability}
        spec:
          ratioMetric:
            good: {metricSource: {type: slostream, spec: {service: web, metric: http}}}
            total: {metricSource: {type: slostream, spec: {service: web, metric: http}}}
      timeWindow:
        - {duration: 1M, isRolling: false, calendar: {startTime: "2022-01-01 12:00:00", timeZone: America/New_York}}
      budgetingMethod: Timeslices
      objectives:
        - {displayName: Internal objective, op: gt, target: 0.995, timeSliceTarget: 0.99, timeSliceWindow: 1m}
""")


def _file(tmp_path, text, name="defs.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_openslo_documents_become_slos(tmp_path):
    definitions, problems = load_definition_file(_file(tmp_path, OPENSLO))
    assert problems == []
    latency, availability = definitions.slos
    assert (latency.name, latency.service, latency.metric) == ("checkout-latency", "checkout", "latency_ms")
    assert latency.good == GoodRule("value_le", 300.0) and latency.budgeting == Timeslices(60, 0.95)
    assert latency.window.rolling_s == 28 * 86400 and latency.objective == 0.99
    assert [round(t.burn_rate, 2) for t in latency.tiers] == [13.44, 5.6, 2.8, 0.93]
    assert availability.good == GoodRule("ok") and availability.window.calendar == "month"
    assert availability.window.timezone == "Europe/Berlin"


def test_public_example_with_op_on_a_ratio_objective_is_rejected_with_the_reason(tmp_path):
    path = _file(tmp_path, PUBLIC_EXAMPLE_WITH_OP_ON_RATIO)
    definitions, problems = load_definition_file(path)
    assert definitions.slos == ()
    assert [(p.document, p.field) for p in problems] == [
        ("document 0 (SLO 'service-availability')", "spec.objectives[0].op")]
    assert "only to a thresholdMetric" in problems[0].message
    result = subprocess.run([sys.executable, "-m", "slostream", "validate", path], capture_output=True, text=True)
    assert result.returncode == 1 and "spec.objectives[0].op" in result.stderr


@pytest.mark.parametrize(("change", "field"), [
    (("op: lte, value: 300, ", ""), "spec.objectives[0].op"),  # threshold objective without op
    (("duration: 28d, isRolling: true", "duration: 1m, isRolling: false"), "spec.timeWindow[0].duration"),
    (("budgetingMethod: Timeslices", "budgetingMethod: RatioTimeslices"), "spec.budgetingMethod"),
    (("indicatorRef: checkout-latency-sli", "indicatorRef: nowhere"), "spec.indicatorRef"),
    (("type: slostream, spec: {service: checkout, metric: latency_ms}", "type: Prometheus, spec: {query: x}"),
     "thresholdMetric.metricSource"),
])
def test_openslo_spec_violations_name_the_field(tmp_path, change, field):
    _, problems = load_definition_file(_file(tmp_path, OPENSLO.replace(*change)))
    assert any(p.field.startswith(field) or field in p.field for p in problems), problems
    assert all("Fix:" in p.message for p in problems)


POLICIES = """
policies:
  - {name: p99, service: api, metric: latency_ms, aggregate: p99, window: 1m, warning: 300, critical: 500}
"""


@pytest.mark.parametrize(("policy", "message"), [
    ("{name: p, service: a, metric: m, aggregate: p99, warning: 500, critical: 300}",
     "field 'warning': (500) is not on the safe side of critical (300)"),
    ("{name: p, service: a, metric: m, aggregate: throughput, direction: below, warning: 5, critical: 10}",
     "field 'warning': (5) is not on the safe side of critical (10)"),
    ("{name: p, service: a, metric: m, aggregate: error_ratio, warning: 0.1, critical: 1.5}",
     "field 'critical': (1.5) is outside the bounds [0, 1]"),
    ("{name: p, service: a, metric: m, aggregate: mean, warning: 10, critical: 20, min: 0, max: 15}",
     "field 'critical': (20) is outside the bounds [0, 15]"),
    ("{name: p, service: a, metric: m, aggregate: p42, critical: 1}", "field 'aggregate': is 'p42'"),
    ("{name: p, service: a, metric: m, aggregate: max}", "Fix: give at least one level"),
])
def test_policy_validation_messages(tmp_path, policy, message):
    path = _file(tmp_path, f"policies:\n  - {policy}\n")
    _, problems = load_definition_file(path)
    text = "\n".join(str(p) for p in problems)
    assert f"{path}: policy 'p': " in text and message in text, text


def test_settings_yaml_carries_slos_and_policies_and_rejects_bad_ones(tmp_path):
    good = _file(tmp_path, "grace_s: 5\n" + POLICIES + textwrap.dedent("""
        slos:
          - {name: a, service: api, metric: http, objective: 0.99, window: 7d, good: ok}
        alertmanager: {url: "http://127.0.0.1:9093"}
    """), "settings.yaml")
    settings = load_settings(good, {}, {})
    assert [s.name for s in settings.slos] == ["a"] and [p.name for p in settings.policies] == ["p99"]
    assert settings.alertmanager_url == "http://127.0.0.1:9093"
    bad = _file(tmp_path, "slos:\n  - {name: a, service: api, metric: http, objective: 2, window: 7d, good: ok}\n",
                "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: slo 'a': field 'objective'"):
        load_settings(bad, {}, {})
    odd = _file(tmp_path, "bucket_s: 20\n" + POLICIES.replace("window: 1m", "window: 30s"), "odd.yaml")
    with pytest.raises(ConfigError, match=r"policy 'p99': field 'window'.*multiple of bucket_s"):
        load_settings(odd, {}, {})


@pytest.mark.parametrize(("raw", "problem"), [
    (b'{"command": "silence", "matchers": {"slo": "a"}}', "'until' is 'None'"),
    (b'{"command": "silence", "matchers": {"slo": "a"}, "until": "tomorrow"}', "RFC 3339"),
    (b'{"command": "unsilence", "by": "ana"}', "needs 'silence_id'"),
    (b'{"command": "unsilence", "id": "maint", "sig": "c2ln"}', "needs 'silence_id'"),
    (b'{"command": "ack", "fingerprint": "abc"}', "needs 'by'"),
    (b'{"command": "reboot"}', "use one of silence, unsilence, ack"),
    (b'[1, 2]', "a command is a JSON object"),
])
def test_malformed_commands_say_why(raw, problem):
    parsed = parse_command(raw, offset=1, now=0.0)
    assert isinstance(parsed, CommandError) and problem in parsed.message


def test_commands_parse():
    silence = parse_command(b'{"command": "silence", "matchers": {"slo": "a"}, "until": "2026-11-22T18:00:00Z",'
                            b' "id": "s1", "by": "ana"}', offset=3, now=0.0)
    assert silence.silence.until == 1795370400.0 and silence.silence.id == "s1"
    ack = parse_command(b'{"command": "ack", "matchers": {"severity": "page"}, "by": "bo"}', 4, 0.0)
    assert ack.kind == "ack" and ack.matchers == {"severity": "page"} and ack.by == "bo"


def test_escalated_alert_lives_and_ends_with_its_condition():
    book = AlertBook(cooldown_s=0, escalate_after_s=600)
    ticket = {"alertname": "SLOErrorBudgetBurn", "slo": "a", "severity": "ticket"}
    page = {**ticket, "severity": "page"}
    book.evaluate(0, [Condition(ticket, True), Condition(page, False)])
    events = book.evaluate(700, [Condition(ticket, True), Condition(page, False)])
    assert [(e.type, e.alert["labels"]["severity"]) for e in events] == [("resolved", "ticket"), ("firing", "page")]
    raised = events[1].alert["labels"]
    assert raised["escalated_from"] == "ticket"
    # Still holding: nothing new, and the page's own (false) condition does not end it.
    assert book.evaluate(800, [Condition(ticket, True), Condition(page, False)]) == []
    events = book.evaluate(900, [Condition(ticket, False), Condition(page, False)])
    assert [(e.type, e.alert["labels"]) for e in events] == [("resolved", raised)]


def test_flags_vectorised_match_the_scalar_rule():
    values = np.array([1.0, 2.0, np.nan, 3.0])
    oks = np.array([1, 0, 1, -1], dtype=np.int8)
    assert GoodRule("ok").flags(values, oks).tolist() == [1, 0, 1, -1]
    assert GoodRule("value_gt", 2.0).flags(values, oks).tolist() == [0, 0, -1, 1]
    assert GoodRule("value_lt", 2.0).flags(values, oks).tolist() == [1, 0, -1, 0]


def test_the_definitions_schema_accepts_what_the_loader_accepts(tmp_path):
    from importlib.resources import files

    import yaml

    from tests.schemas import validator
    from tests.test_slo_definitions import VALID

    schema = validator("slo-definitions.schema.json")
    demo = (files("slostream") / "demo-definitions.yaml").read_text()
    for text in (VALID, POLICIES, demo):
        schema.validate(yaml.safe_load(text))
        _, problems = load_definition_file(_file(tmp_path, text))
        assert problems == []
    assert not schema.is_valid({"slos": [{"name": "x", "service": "s", "metric": "m", "objective": 2,
                                          "window": "1d", "good": "ok"}]})

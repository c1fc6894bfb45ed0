import subprocess
import sys

import pytest

from slostream.config import ConfigError, load_settings


def test_precedence_defaults_yaml_env_flags(tmp_path):
    path = tmp_path / "slostream.yaml"
    path.write_text("partitions: 3\ngrace_s: 10\nlabel_keys: [region, zone]\nweb_port: 7000\n")
    s = load_settings(str(path), {"SLOSTREAM_GRACE_S": "12", "HOME": "/root"}, {"web_port": "7001"})
    assert (s.partitions, s.grace_s, s.label_keys, s.web_port) == (3, 12.0, ("region", "zone"), 7001)
    assert s.topic("measurements") == "slostream.measurements"


@pytest.mark.parametrize(
    "yaml_text, field, fix",
    [
        ("gracee_s: 3\n", "gracee_s", "did you mean 'grace_s'"),
        ("partitions: many\n", "partitions", "whole number of partitions"),
        ("bucket_s: 7\n", "bucket_s", "divides 60"),
        ("broker: localhost:9092\n", "broker", "kafka://host:port"),
        ("report_window_s: 45\n", "report_window_s", "multiple of bucket_s"),
        ("web_port: 70000\n", "web_port", "between 1 and 65535"),
        ("grace_s: -1\n", "grace_s", "from 0 to 300"),
        ("drift: {detector: cusum}\n", "drift.detector", "one of multiscale, adwin, page_hinkley, kswin"),
        ("drift: {false_per_week: 0}\n", "drift.false_per_week", "above 0 and at most 100"),
        ("drift: {aggregates: [p42]}\n", "drift.aggregates", "a list of p50"),
        ("drift: {params: {deltaa: 0.1}}\n", "drift.params", "multiscale takes none"),
        ("drift: {detector: adwin, params: {deltaa: 0.1}}\n", "drift.params", "parameter names"),
        ("drift: {overrides: [{service: a, cooldown: soon}]}\n", "drift.overrides[0].cooldown", "a duration"),
        ("drift: {window: 5m}\n", "drift.window", "use enabled, aggregates"),
        ("drift: {alert: loud}\n", "drift.alert", "off, or a severity: info, warning"),
        ("max_name_bytes: 8\n", "max_name_bytes", "see README"),
        ("max_output_bytes: 100000\nmax_deadletter_bytes: 65536\n", "max_deadletter_bytes",
         "at most (max_output_bytes - 4096) / 5"),
        ("max_output_bytes: 1000\n", "max_output_bytes", "message.max.bytes"),
        ("max_batch_bytes: 1000\n", "max_batch_bytes", "see README"),
    ],
)
def test_errors_name_file_field_and_fix(tmp_path, yaml_text, field, fix):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_settings(str(path), {}, {})
    message = str(err.value)
    assert str(path) in message and f"'{field}'" in message and fix in message and "Fix:" in message


def test_future_skew_is_not_bounded_by_any_bucket_retention(tmp_path):
    """SLI quantiles come from each window's own sketch, so producers whose clocks run an hour ahead
    (and the longest grace) are a valid configuration."""
    path = tmp_path / "skew.yaml"
    path.write_text("max_future_skew_s: 3600\ngrace_s: 300\nreport_window_s: 300\n")
    s = load_settings(str(path), {}, {})
    assert (s.max_future_skew_s, s.grace_s, s.report_window_s) == (3600.0, 300.0, 300)


def test_unknown_environment_variable_is_an_error():
    with pytest.raises(ConfigError, match=r"SLOSTREAM_PARTITONS.*did you mean 'partitions'"):
        load_settings(None, {"SLOSTREAM_PARTITONS": "2"}, {})


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("partitions: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(str(path), {}, {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(str(tmp_path / "missing.yaml"), {}, {})


def test_cli_stops_with_exit_code_2_and_a_clear_message(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("partitions: 0\n")
    result = subprocess.run([sys.executable, "-m", "slostream", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "'partitions'" in result.stderr and str(path) in result.stderr


def test_drift_settings_make_the_rules_of_each_series(tmp_path):
    path = tmp_path / "drift.yaml"
    path.write_text("drift:\n  aggregates: [p99, throughput]\n  cooldown: 30m\n  false_per_week: 0.2\n  overrides:\n"
                    "    - {service: 'batch-*', enabled: false}\n"
                    "    - {metric: queue_depth, aggregates: [max], detector: page_hinkley, params: {threshold: 5}}\n")
    rules = load_settings(str(path)).drift
    assert rules.for_series("batch-1", "latency_ms") is None
    api = rules.for_series("api", "latency_ms")
    assert (api.aggregates, api.detector, api.cooldown_s, api.false_per_week) == (
        ("p99", "throughput"), "multiscale", 1800.0, 0.2)
    queue = rules.for_series("api", "queue_depth")
    assert (queue.aggregates, queue.detector, queue.params, queue.cooldown_s) == (
        ("max",), "page_hinkley", {"threshold": 5}, 1800.0)
    assert load_settings().drift.for_series("any", "thing").aggregates == ("p95", "error_ratio")


def test_models_are_policies_without_levels_and_share_their_names(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {name: api-p95-model, service: api, metric: latency_ms, aggregate: p95}\n"
                    "  - {name: api-errors, service: api, metric: http, aggregate: error_ratio, window: 10m}\n")
    s = load_settings(str(path), {}, {})
    first, second = s.models
    assert (first.window_s, first.direction, first.warning, first.critical) == (300, "above", None, None)
    assert (second.window_s, second.min_level, second.max_level) == (600, 0.0, 1.0)
    path.write_text("models:\n  - {name: m, service: api, metric: latency_ms, aggregate: p95, warning: 3}\n")
    with pytest.raises(ConfigError, match=r"model 'm': field 'warning': is not a field of a model"):
        load_settings(str(path), {}, {})
    path.write_text("policies:\n  - {name: m, service: api, metric: x, aggregate: p95, warning: 3}\n"
                    "models:\n  - {name: m, service: api, metric: latency_ms, aggregate: p95}\n")
    with pytest.raises(ConfigError, match=r"policy or model 'm'.*is used twice"):
        load_settings(str(path), {}, {})

"""One frozen, validated settings object, built once from defaults, YAML, env and flags.

Precedence, lowest first: defaults, the YAML file (``--config``), environment
variables ``SLOSTREAM_<FIELD>`` (upper case), command-line flags. Unknown keys
are errors, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slostream.core.buckets import DEFAULT_RESOLUTIONS, Resolution
from slostream.core.control import COMMANDS, ControlKey, public_key_of_pem
from slostream.core.drift_rules import DriftRules
from slostream.core.recommend import STRATEGIES
from slostream.pipeline.types import PipelineConfig

ENV_PREFIX = "SLOSTREAM_"
# What a dead letter holds besides its four bounded fields (names, offsets, CloudEvents attributes).
DEADLETTER_OVERHEAD_BYTES = 4096
# What a record adds to its key and value in a batch of its own: the batch header (61 bytes), the
# record's length, offset and timestamp varints, and its headers (the writer's, a forward's source:
# under a hundred bytes).
RECORD_OVERHEAD_BYTES = 256
BROKER_RE = re.compile(r"^kafka://[A-Za-z0-9.\-_\[\]:]+:\d+(,[A-Za-z0-9.\-_\[\]:]+:\d+)*$")


class ConfigError(ValueError):
    """A setting is wrong; the message names where, which field and the fix."""


class Secret:
    """A credential. Its repr and str are ``***``, so it cannot reach a log line, ``/api`` or a
    metric by being formatted; ``reveal()`` hands the value to the one client that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Each of these secrets can instead be read from the file named by <field>_file (trailing newline
# dropped; webhook_urls: one URL a line), as Docker and Kubernetes mount secrets.
SECRET_FILES = ("sasl_password", "alertmanager_password", "alertmanager_bearer_token", "webhook_urls")


@dataclass(frozen=True)
class Settings:
    broker: str | None = None
    app_id: str = "slostream"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    topic_prefix: str = "slostream."
    partitions: int = 4
    replication_factor: int = 1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    sasl_password_file: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    bucket_s: int = 10
    report_window_s: int = 60
    grace_s: float = 30.0
    idle_after_s: float = 30.0
    series_ttl_s: float = 86400.0
    metrics_series_limit: int = 1_000
    label_keys: tuple[str, ...] = ()
    max_record_bytes: int = 1 << 20
    max_deadletter_bytes: int = 64 << 10
    max_name_bytes: int = 256
    max_labels: int = 32
    max_output_bytes: int = 1 << 20
    max_batch_bytes: int = 64 << 20
    max_future_skew_s: float = 300.0
    checkpoint_interval_s: float = 1.0
    tick_interval_s: float = 1.0
    rebalance_timeout_s: float = 5.0
    fetch_max_wait_ms: int = 100
    changelog_fence: bool | None = None
    data_dir: str | None = None
    log_level: str = "info"
    source: str = "urn:slostream"
    definition_files: tuple[str, ...] = ()
    alertmanager_url: str | None = None
    alertmanager_username: str | None = None
    alertmanager_password: Secret | None = None
    alertmanager_password_file: str | None = None
    alertmanager_bearer_token: Secret | None = None
    alertmanager_bearer_token_file: str | None = None
    webhook_urls: tuple[Secret, ...] = ()
    webhook_urls_file: str | None = None
    alert_cooldown_s: float = 300.0
    escalate_after_s: float | None = None
    alert_resend_s: float = 60.0
    calibration_bins: int = 10
    calibration_bound_c: float = 1.0
    calibration_weekly_alpha: float = 0.05
    threshold_models: bool = True
    recommend_strategy: str = "balanced"
    recommend_every_s: float = 604800.0
    recommend_horizon_s: float = 604800.0
    max_silence_s: float = 30 * 86400.0
    max_silences: int = 1000
    # Parsed from the YAML's control_keys: mapping (key id -> public key and allowed commands).
    control_keys: tuple[ControlKey, ...] = ()
    # Parsed from the YAML's slos:/policies: lists and from definition_files.
    slos: tuple = ()
    policies: tuple = ()
    models: tuple = ()  # the YAML's models: list, threshold models without a policy
    # Parsed from the YAML's drift: section (definitions.drift).
    drift: DriftRules = field(default_factory=DriftRules)
    config_file: str | None = field(default=None, compare=False)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def resolutions(self) -> tuple[Resolution, ...]:
        # The base level keeps counts for 1h1m40s and sketches for 10 minutes, whatever its width.
        default = DEFAULT_RESOLUTIONS[0]
        span, sketch_span = default.width * default.slots, default.width * default.kept_sketches
        base = Resolution(self.bucket_s, span // self.bucket_s, sketch_span // self.bucket_s)
        return (base, *DEFAULT_RESOLUTIONS[1:])

    @property
    def broker_hosts(self) -> list[str]:
        return self.broker.removeprefix("kafka://").split(",") if self.broker else []


_HELP = {
    "recommend_strategy": f"use one of {', '.join(STRATEGIES)}",
    "recommend_every_s": "give seconds of event time between scheduled recommendations, e.g. 604800 for 7 days",
    "recommend_horizon_s": "give the seconds of event time a recommendation predicts, e.g. 604800 for 7 days",
    "broker": "use kafka://host:port[,host:port], or leave unset to start the embedded broker",
    "web_port": "use a TCP port between 1 and 65535",
    "partitions": "use a whole number of partitions from 1 to 1024",
    "bucket_s": "use a whole number of seconds that divides 60 and is below it (1, 2, 5, 10, 15, 20 or 30)",
    "report_window_s": "use a whole multiple of bucket_s, at most 300 seconds",
    "grace_s": "use a number of seconds from 0 to 300",
    "log_level": "use one of debug, info, warning, error",
    "replication_factor": "use a whole number from 1 to the number of brokers (3 is usual in production)",
    "security_protocol": f"use one of {', '.join(SECURITY_PROTOCOLS)}",
    "sasl_mechanism": f"use one of {', '.join(SASL_MECHANISMS)} (SCRAM where the broker supports it)",
    "max_output_bytes": "set it to at most the broker's message.max.bytes (Apache Kafka: 1048588) and the "
                        "output topics' max.message.bytes",
    "max_deadletter_bytes": "use from 64 to max_record_bytes, and at most (max_output_bytes - 4096) / 5",
}


STRUCTURED = ("slos", "policies", "models", "alertmanager", "drift", "control_keys")
ALERTMANAGER_KEYS = ("url", "username", "password", "password_file", "bearer_token", "bearer_token_file")
KEYGEN_FIX = ("make a key pair with `slostream keygen NAME` (or `openssl genpkey -algorithm ed25519 -out NAME.key` "
              "and `openssl pkey -in NAME.key -pubout -out NAME.pub`) and name NAME.pub")


def pipeline_config(settings: Settings) -> PipelineConfig:
    """What the partition pipeline reads of the settings."""
    return PipelineConfig(
        resolutions=settings.resolutions,
        report_window_s=settings.report_window_s,
        grace_s=settings.grace_s,
        idle_after_s=settings.idle_after_s,
        label_keys=settings.label_keys,
        max_record_bytes=settings.max_record_bytes,
        max_future_skew_s=settings.max_future_skew_s,
        max_deadletter_bytes=settings.max_deadletter_bytes,
        max_state_bytes=settings.max_output_bytes - RECORD_OVERHEAD_BYTES,
        max_name_bytes=settings.max_name_bytes,
        max_labels=settings.max_labels,
        source=settings.source,
        slos=settings.slos,
        policies=settings.policies,
        models=settings.models,
        alert_cooldown_s=settings.alert_cooldown_s,
        escalate_after_s=settings.escalate_after_s,
        partitions=settings.partitions,
        series_ttl_s=settings.series_ttl_s,
        drift=settings.drift,
        calibration_bins=settings.calibration_bins,
        calibration_bound_c=settings.calibration_bound_c,
        calibration_weekly_alpha=settings.calibration_weekly_alpha,
        threshold_models=settings.threshold_models,
        recommend_strategy=settings.recommend_strategy,
        recommend_every_s=settings.recommend_every_s,
        recommend_horizon_s=settings.recommend_horizon_s,
    )


def _fields() -> dict[str, dataclasses.Field]:
    parsed_apart = ("config_file", *STRUCTURED)
    return {f.name: f for f in dataclasses.fields(Settings) if f.name not in parsed_apart}


def _coerce(name: str, raw: Any, where: str) -> Any:
    kind = _fields()[name].type
    try:
        if raw is None:
            return None
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            if text in ("", "auto"):
                return None
            raise ValueError(raw)
        if kind.startswith("int"):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind.startswith("float"):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if kind.startswith("tuple"):
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
                raise ValueError(raw)
            kept = tuple(i.strip() for i in items if i.strip())
            return tuple(map(Secret, kept)) if kind.startswith("tuple[Secret") else kept
        if not isinstance(raw, str):
            raise ValueError(raw)
        return Secret(raw) if kind.startswith("Secret") else raw
    except (TypeError, ValueError):
        shown = "***" if "Secret" in kind else repr(raw)
        raise ConfigError(
            f"{where}: field '{name}' has value {shown}, which is not a valid {kind}. "
            f"Fix: {_HELP.get(name, 'give a ' + kind)}."
        ) from None


def _unknown(name: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(_fields()), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(_fields()))}"
    return ConfigError(f"{where}: unknown field '{name}'. Fix: remove it or correct the name ({hint}).")


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    values: dict[str, Any] = {}
    definitions = None
    if config_file:
        values, definitions = _read_yaml(config_file, env or {})
    for key, raw in (env or {}).items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}TEST_KAFKA":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in _fields():
            raise _unknown(name, f"environment variable {key}")
        values[name] = _coerce(name, raw, f"environment variable {key}")
    for name, raw in (flags or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw, f"flag --{name.replace('_', '-')}")
    values.update(_definitions(config_file, definitions, values.get("definition_files", ())))
    values.update(_secrets_from_files(values, config_file or "settings"))
    settings = Settings(**values, config_file=config_file)
    validate(settings)
    return settings


def _definitions(config_file: str | None, inline, files: tuple[str, ...]) -> dict[str, tuple]:
    """SLOs and policies from the config file and every definition file; all problems at once."""
    from slostream.definitions.native import check_unique, load_definition_file, merge

    parts, problems = [], []
    if inline is not None:
        parts.append(inline[0])
        problems.extend(inline[1])
    for path in files:
        found, errors = load_definition_file(path)
        parts.append(found)
        problems.extend(errors)
    merged = merge(*parts)
    problems.extend(check_unique(merged, config_file or "definitions"))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in SLO/policy definitions:\n" +
                          "\n".join(f"  {p}" for p in problems))
    return {"slos": merged.slos, "policies": merged.policies, "models": merged.models}


def _secrets_from_files(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Each secret whose ``<field>_file`` is set, read from that file."""
    read = {}
    for name in SECRET_FILES:
        path = values.get(f"{name}_file")
        if path is None:
            continue
        if values.get(name):
            raise ConfigError(f"{where}: fields '{name}' and '{name}_file' are both set. Fix: keep one of them.")
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{where}: field '{name}_file' names {path}, which cannot be read ({exc.strerror}). "
                              "Fix: name a readable file that holds the secret.") from None
        if name == "webhook_urls":
            read[name] = tuple(Secret(line.strip()) for line in text.splitlines() if line.strip())
        else:
            read[name] = Secret(text.rstrip("\r\n"))
    return read


def _read_yaml(path: str, env: Mapping[str, str]) -> tuple[dict[str, Any], Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc.strerror}). Fix: pass an existing file.") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix: correct the syntax at the position shown.") from None
    if document is None:
        return {}, None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of field: value. Fix: see README, Configuration.")
    from slostream.definitions.native import parse_document

    out = {}
    alertmanager = document.get("alertmanager")
    if alertmanager is not None:
        keys = ALERTMANAGER_KEYS
        if not isinstance(alertmanager, dict) or set(alertmanager) - set(keys):
            shown = sorted(alertmanager) if isinstance(alertmanager, dict) else repr(alertmanager)
            raise ConfigError(f"{path}: field 'alertmanager' has {shown}. Fix: write alertmanager: "
                              f"{{url: http://host:9093}}, optionally with {', '.join(keys[1:])}.")
        for key, raw in alertmanager.items():
            out[f"alertmanager_{key}"] = _coerce(f"alertmanager_{key}", raw, f"{path}: alertmanager")
    if document.get("control_keys") is not None:
        out["control_keys"] = _control_keys(document["control_keys"], path, env)
    from slostream.definitions.drift import DriftSettingsError, parse_drift

    try:
        out["drift"] = parse_drift(document.get("drift"), path)
    except DriftSettingsError as exc:
        raise ConfigError(str(exc)) from None
    for name, raw in document.items():
        if name in STRUCTURED:
            continue
        if name not in _fields():
            raise _unknown(str(name), path)
        out[name] = _coerce(name, raw, path)
    definitions = parse_document({k: document[k] for k in ("slos", "policies", "models") if k in document}, path, 0)
    return out, definitions


def _control_keys(raw: Any, path: str, env: Mapping[str, str]) -> tuple[ControlKey, ...]:
    """The YAML's control_keys: {KEY_ID: {public_key_file: FILE | public_key_env: NAME, commands: [...]}}.
    A relative public_key_file is read from the config file's directory."""
    shape = "{KEY_ID: {public_key_file: FILE or public_key_env: NAME, commands: [silence, ack, ...]}}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: field 'control_keys' is {raw!r}. Fix: write control_keys: {shape}.")
    keys = []
    for key_id, grant in raw.items():
        def where(name: str = "", key_id: Any = key_id) -> str:
            return f"{path}: field 'control_keys.{key_id}{name}'"

        if not isinstance(grant, dict) or set(grant) - {"public_key_file", "public_key_env", "commands"}:
            raise ConfigError(f"{where()} is {grant!r}. Fix: write control_keys: {shape}.")
        commands = grant.get("commands")
        if (not isinstance(commands, list) or not commands
                or not all(isinstance(c, str) and c in COMMANDS for c in commands)):
            raise ConfigError(f"{where('.commands')} is {commands!r}. Fix: list the commands this key may send, "
                              f"from {', '.join(COMMANDS)}.")
        if ("public_key_file" in grant) == ("public_key_env" in grant):
            raise ConfigError(f"{where()} needs exactly one of public_key_file and public_key_env. Fix: give the PEM "
                              "file of the public key, or the environment variable that holds its PEM text.")
        if "public_key_file" in grant:
            field_name = where(".public_key_file")
            file = Path(path).parent / str(grant["public_key_file"])
            try:
                pem = file.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{field_name}: cannot read {file} ({exc.strerror}). Fix: {KEYGEN_FIX}.") from None
        else:
            field_name = where(".public_key_env")
            text = env.get(str(grant["public_key_env"]))
            if not text:
                raise ConfigError(f"{field_name}: environment variable {grant['public_key_env']} is not set. "
                                  "Fix: set it to the PEM text of the public key (NAME.pub).")
            pem = text.encode()
        try:
            public_key = public_key_of_pem(pem)
        except ValueError as exc:
            raise ConfigError(f"{field_name}: {exc}. Fix: {KEYGEN_FIX}.") from None
        keys.append(ControlKey(str(key_id), public_key, tuple(commands)))
    return tuple(keys)


def validate(s: Settings) -> None:
    where = s.config_file or "settings"

    def fail(name: str, problem: str) -> None:
        raise ConfigError(f"{where}: field '{name}' {problem}. Fix: {_HELP.get(name, 'see README, Configuration')}.")

    if s.broker is not None and not BROKER_RE.match(s.broker):
        fail("broker", f"is {s.broker!r}, not kafka://host:port[,host:port]")
    if not 1 <= s.web_port <= 65535:
        fail("web_port", f"is {s.web_port}")
    if not 1 <= s.partitions <= 1024:
        fail("partitions", f"is {s.partitions}")
    if s.bucket_s <= 0 or 60 % s.bucket_s or s.bucket_s == 60:
        fail("bucket_s", f"is {s.bucket_s}")
    if s.report_window_s <= 0 or s.report_window_s % s.bucket_s or s.report_window_s > 300:
        fail("report_window_s", f"is {s.report_window_s} (bucket_s is {s.bucket_s})")
    if not 0 <= s.grace_s <= 300:
        fail("grace_s", f"is {s.grace_s}")
    for name in ("idle_after_s", "checkpoint_interval_s", "tick_interval_s", "max_future_skew_s",
                 "rebalance_timeout_s", "series_ttl_s"):
        if getattr(s, name) <= 0:
            fail(name, f"is {getattr(s, name)}, it must be positive")
    if s.metrics_series_limit < 0:
        fail("metrics_series_limit", f"is {s.metrics_series_limit}, it must be 0 or more")
    if not 1 <= s.fetch_max_wait_ms <= 30_000:
        fail("fetch_max_wait_ms", f"is {s.fetch_max_wait_ms}, it must be 1 to 30000")
    if not 64 <= s.max_record_bytes <= 1 << 28:
        # The upper bound keeps a record's elements (at least ~37 bytes each) under 2**24, which
        # per-element replay marks assume.
        fail("max_record_bytes", f"is {s.max_record_bytes}, it must be from 64 to 268435456 (256 MiB)")
    if not 2 <= s.calibration_bins <= 1000:
        fail("calibration_bins", f"is {s.calibration_bins}, it must be from 2 to 1000")
    if not s.calibration_bound_c > 0:
        fail("calibration_bound_c", f"is {s.calibration_bound_c}, it must be above 0")
    if not 0 < s.calibration_weekly_alpha <= 0.5:
        fail("calibration_weekly_alpha", f"is {s.calibration_weekly_alpha}, it must be over 0 and at most 0.5")
    if s.recommend_strategy not in STRATEGIES:
        fail("recommend_strategy", f"is {s.recommend_strategy!r}")
    for name in ("recommend_every_s", "recommend_horizon_s"):
        if not 3600 <= getattr(s, name) <= 90 * 86400:
            fail(name, f"is {getattr(s, name)}, it must be from 3600 (an hour) to 7776000 (90 days)")
    if not 0 < s.max_silence_s <= 366 * 86400:
        fail("max_silence_s", f"is {s.max_silence_s}, it must be above 0 and at most 31622400 (a year)")
    if not 1 <= s.max_silences <= 100_000:
        fail("max_silences", f"is {s.max_silences}, it must be from 1 to 100000")
    if not 64 <= s.max_deadletter_bytes <= s.max_record_bytes:
        fail("max_deadletter_bytes", f"is {s.max_deadletter_bytes}, it must be from 64 to max_record_bytes")
    if not 16 <= s.max_name_bytes <= 65536:
        fail("max_name_bytes", f"is {s.max_name_bytes}, it must be from 16 to 65536")
    if not 0 <= s.max_labels <= 1024:
        fail("max_labels", f"is {s.max_labels}, it must be from 0 to 1024")
    if not 1 << 16 <= s.max_output_bytes <= 1 << 28:
        fail("max_output_bytes", f"is {s.max_output_bytes}, it must be from 65536 to 268435456 (256 MiB)")
    if 5 * s.max_deadletter_bytes + DEADLETTER_OVERHEAD_BYTES > s.max_output_bytes:
        # A dead letter carries four fields of up to that size (value and key in base64, a third
        # longer; element and message).
        fail("max_deadletter_bytes", f"is {s.max_deadletter_bytes}, so a dead letter may reach "
             f"{5 * s.max_deadletter_bytes + DEADLETTER_OVERHEAD_BYTES} bytes, over max_output_bytes "
             f"({s.max_output_bytes})")
    if not 1 << 20 <= s.max_batch_bytes <= 1 << 31:
        fail("max_batch_bytes", f"is {s.max_batch_bytes}, it must be from 1048576 (1 MiB) to 2147483648 (2 GiB)")
    if s.log_level not in ("debug", "info", "warning", "error"):
        fail("log_level", f"is {s.log_level!r}")
    if s.alertmanager_url is not None and not re.match(r"^https?://[^/@\s]+(/|$)", s.alertmanager_url):
        fail("alertmanager_url", f"is {redact_url(s.alertmanager_url)!r}, not an http(s) URL without credentials "
                                 "(give them as alertmanager username/password or bearer_token)")
    for number, url in enumerate(s.webhook_urls, 1):
        if not re.match(r"^https?://[^/\s]+", url.reveal()):
            fail("webhook_urls", f"holds a URL (number {number}) that is not an http(s) URL")
    if s.alertmanager_bearer_token is not None and (s.alertmanager_username or s.alertmanager_password):
        raise ConfigError(f"{where}: alertmanager has both a bearer_token and a username/password. "
                          "Fix: keep the one your Alertmanager (or the proxy in front of it) checks.")
    if (s.alertmanager_username is None) != (s.alertmanager_password is None):
        raise ConfigError(f"{where}: alertmanager needs both username and password (or password_file) for "
                          "basic auth. Fix: set both, or neither.")
    if not 1 <= s.replication_factor <= 32:
        fail("replication_factor", f"is {s.replication_factor}")
    _validate_security(s, where)
    if s.alert_cooldown_s < 0 or s.alert_resend_s <= 0 or (s.escalate_after_s is not None and s.escalate_after_s <= 0):
        fail("alert_cooldown_s", "or alert_resend_s or escalate_after_s is out of range; they must be positive")
    for slo in s.slos:
        spans = [t.long_s for t in slo.tiers] + [t.short_s for t in slo.tiers]
        if slo.budgeting != "occurrences":
            spans.append(slo.budgeting.slice_s)
        if any(span % s.bucket_s for span in spans):
            raise ConfigError(f"{where}: slo '{slo.name}': alerting windows and slices must be multiples of "
                              f"bucket_s ({s.bucket_s}s). Fix: change the windows or bucket_s.")
    for policy in (*s.policies, *s.models):
        if policy.window_s % s.bucket_s:
            raise ConfigError(f"{where}: policy '{policy.name}': field 'window' ({policy.window_s}s) must be a "
                              f"multiple of bucket_s ({s.bucket_s}s). Fix: change the window or bucket_s.")
    if not s.topic_prefix or not re.match(r"^[A-Za-z0-9._\-]+$", s.topic_prefix):
        fail("topic_prefix", f"is {s.topic_prefix!r}; topic names allow letters, digits, '.', '_' and '-'")


def redact_url(url: str) -> str:
    """What a log line or a metric may show of a URL that can hold a token in its user info, path
    or query (a Slack or Teams webhook does): its scheme, host and port."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(?:[^/@?#]*@)?([^/?#]*)(.*)$", url)
    if match is None:
        return "***"
    scheme, host, rest = match.groups()
    return f"{scheme}{host}/***" if rest.strip("/") else f"{scheme}{host}"


def _validate_security(s: Settings, where: str) -> None:
    """Kafka security settings that fit together, and certificate files that load."""

    def fail(problem: str, fix: str) -> None:
        raise ConfigError(f"{where}: {problem}. Fix: {fix}.")

    protocol = s.security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        fail(f"field 'security_protocol' is {protocol!r}", _HELP["security_protocol"])
    sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
    sasl_fields = [name for name in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(s, name)]
    if sasl:
        if s.sasl_mechanism not in SASL_MECHANISMS:
            fail(f"field 'sasl_mechanism' is {s.sasl_mechanism!r} with security_protocol {protocol}",
                 _HELP["sasl_mechanism"])
        for name in ("sasl_username", "sasl_password"):
            if not getattr(s, name):
                fail(f"field '{name}' is not set, and security_protocol {protocol} needs it",
                     f"set {name}" + (" or sasl_password_file" if name == "sasl_password" else ""))
    elif sasl_fields:
        fail(f"field '{sasl_fields[0]}' is set but security_protocol is {protocol}, which sends no credentials",
             "set security_protocol: SASL_SSL (or SASL_PLAINTEXT on a trusted network)")
    ssl_fields = [name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(s, name)]
    if not tls:
        if ssl_fields:
            fail(f"field '{ssl_fields[0]}' is set but security_protocol is {protocol}, which does not use TLS",
                 "set security_protocol: SSL or SASL_SSL")
        return
    if bool(s.ssl_certfile) != bool(s.ssl_keyfile):
        fail("fields 'ssl_certfile' and 'ssl_keyfile' come together (a client certificate and its key)",
             "set both, or neither")
    for name in ssl_fields:
        if not Path(getattr(s, name)).is_file():
            fail(f"field '{name}' names {getattr(s, name)}, which is not a readable file", "name a PEM file")
    try:
        context = ssl.create_default_context(cafile=s.ssl_cafile)
        if s.ssl_certfile:
            context.load_cert_chain(s.ssl_certfile, s.ssl_keyfile)
    except (ssl.SSLError, ValueError) as exc:
        named = "ssl_certfile/ssl_keyfile" if s.ssl_certfile else "ssl_cafile"
        fail(f"the TLS files ({named}) do not load: {exc}",
             "give PEM files: the CA that signed the broker's certificate, and a client certificate with its "
             "unencrypted key")

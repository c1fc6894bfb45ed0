"""docker-compose.yml and deploy/ are safe by default. Docker is not on these machines, so the
compose file is parsed and its properties checked; the mounted worker config is loaded with the
settings loader, as a worker would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slostream.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = [name for name in SERVICES if name.startswith("worker")]


def interpolate(text: str) -> str:
    """Compose's ${NAME:-default} with no variable set: the default ("${NAME:?error}" stays unset)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-([^}]*))?[^}]*\}", lambda m: m.group(1) or "", text)


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source of each volume."""
    return {parts[1]: parts[0] for parts in (str(v).split(":") for v in service.get("volumes", []))}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check_and_a_restart_policy(name):
    service = SERVICES[name]
    assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
    check = service.get("healthcheck", {})
    assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), name


def test_services_start_after_what_they_need_is_healthy():
    for worker in WORKERS:
        assert SERVICES[worker]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_no_port_is_published_on_every_interface_by_default():
    published = [(name, interpolate(str(port))) for name, service in SERVICES.items()
                 for port in service.get("ports", [])]
    assert published  # Grafana, Prometheus and Kafka's host listener
    for name, port in published:
        assert port.startswith("127.0.0.1:"), (name, port)
    for worker in WORKERS:
        assert "ports" not in SERVICES[worker]


def test_kafka_keeps_its_log_on_a_volume_and_makes_no_topics_by_itself():
    kafka = SERVICES["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    volume = mounts(kafka)[log_dir]
    assert volume in COMPOSE["volumes"]
    assert kafka["environment"]["CLUSTER_ID"]  # the same id on every start, so the volume is reused
    assert str(kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"


def test_grafana_has_no_anonymous_access_and_no_default_password():
    env = SERVICES["grafana"]["environment"]
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED")).lower() == "false"
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP")).lower() == "false"
    # ${VAR:?message}: compose refuses to start without it, so no stack runs with admin/admin.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])


def test_workers_run_as_a_non_root_user_on_a_read_only_file_system():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for worker in WORKERS:
        service = SERVICES[worker]
        assert str(service.get("user", users[-1])).split(":")[0] not in ("root", "0")
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"]


def test_the_mounted_worker_config_validates_with_an_slo_partitions_and_replication_factor(tmp_path):
    worker = SERVICES["worker-1"]
    command = worker["command"]
    config_in_container = command[command.index("--config") + 1]
    source = ROOT / mounts(worker)[config_in_container].removeprefix("./")
    raw = yaml.safe_load(source.read_text())
    assert {"partitions", "replication_factor", "slos", "broker"} <= set(raw)
    env = {key: interpolate(str(value)) for key, value in worker.get("environment", {}).items()}
    settings = load_settings(str(source), env, {})
    assert settings.slos and settings.broker == "kafka://kafka:9092"
    assert (settings.partitions, settings.replication_factor) == (raw["partitions"], raw["replication_factor"])
    # The worker's own start-up check, as `slostream validate` runs it on definition files.
    definitions = tmp_path / "definitions.yaml"
    definitions.write_text(yaml.safe_dump({k: raw[k] for k in ("slos", "policies") if k in raw}))
    result = subprocess.run([sys.executable, "-m", "slostream", "validate", str(definitions)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "1 SLO(s) and 1 policies valid" in result.stdout, result.stderr


def test_prometheus_scrapes_every_worker():
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{worker}:6066" for worker in WORKERS}

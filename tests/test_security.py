"""Kafka security settings, secrets from files, and their redaction (no broker; see
tests/integration/test_kafka_security.py for the clients through a TLS and SCRAM listener)."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol
from mode.utils.logging import ExtensionFormatter

from slostream.config import ConfigError, Secret, load_settings, redact_url
from slostream.io.security import faust_broker_credentials, kafka_client_options, redact_logs
from slostream.io.sinks import alertmanager_headers
from tests.kafka_front import make_certificates

SECRET = "hunter2-test-secret"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _settings(**env: str):
    return load_settings(None, {f"SLOSTREAM_{k.upper()}": v for k, v in env.items()}, {})


@pytest.mark.parametrize("env, field, fix", [
    ({"security_protocol": "TLS"}, "security_protocol", "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": SECRET}, "sasl_mechanism",
     "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI", "sasl_username": "u",
      "sasl_password": SECRET}, "sasl_mechanism", "SCRAM"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": SECRET}, "sasl_username",
     "set sasl_username"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "sasl_password",
     "sasl_password_file"),
    ({"sasl_username": "u"}, "sasl_username", "security_protocol: SASL_SSL"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
      "sasl_password": SECRET, "ssl_cafile": "/etc/hostname"}, "ssl_cafile", "SSL or SASL_SSL"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile", "name a PEM file"),
    ({"security_protocol": "SSL", "ssl_certfile": "/etc/hostname"}, "ssl_keyfile", "set both"),
    ({"security_protocol": "SSL", "ssl_cafile": "/etc/hostname"}, "ssl_cafile", "give PEM files"),
    ({"replication_factor": "0"}, "replication_factor", "3 is usual"),
    ({"sasl_password_file": "/nonexistent/password"}, "sasl_password_file", "readable file"),
    ({"alertmanager_url": "http://admin:pw@am:9093"}, "alertmanager_url", "username/password"),
    ({"alertmanager_username": "u"}, "username and password", "set both"),
    ({"alertmanager_bearer_token": SECRET, "alertmanager_username": "u", "alertmanager_password": "p"},
     "bearer_token and a username", "keep the one"),
])
def test_security_errors_name_the_field_and_the_fix(env, field, fix):
    with pytest.raises(ConfigError) as err:
        _settings(**env)
    message = str(err.value)
    assert field in message and "Fix:" in message and fix in message, message
    assert SECRET not in message


def test_a_secret_and_its_file_together_are_an_error(tmp_path):
    (tmp_path / "pw").write_text(SECRET)
    with pytest.raises(ConfigError, match="'sasl_password' and 'sasl_password_file' are both set"):
        _settings(sasl_password="x", sasl_password_file=str(tmp_path / "pw"))


def test_secrets_come_from_files_and_never_show_in_a_repr(tmp_path):
    (tmp_path / "pw").write_text(SECRET + "\n")
    (tmp_path / "token").write_text(SECRET + "-token\n")
    (tmp_path / "hooks").write_text(f"https://hooks.example/services/{SECRET}\n\nhttps://other.example/h?k={SECRET}\n")
    path = tmp_path / "slostream.yaml"
    path.write_text(f"alertmanager: {{url: 'http://am:9093', bearer_token_file: {tmp_path / 'token'}}}\n"
                    f"webhook_urls_file: {tmp_path / 'hooks'}\n")
    settings = load_settings(str(path), {"SLOSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                         "SLOSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
                                         "SLOSTREAM_SASL_USERNAME": "worker",
                                         "SLOSTREAM_SASL_PASSWORD_FILE": str(tmp_path / "pw")}, {})
    assert settings.sasl_password.reveal() == SECRET
    assert settings.alertmanager_bearer_token.reveal() == SECRET + "-token"
    assert [url.reveal() for url in settings.webhook_urls] == [f"https://hooks.example/services/{SECRET}",
                                                              f"https://other.example/h?k={SECRET}"]
    assert SECRET not in repr(settings) and SECRET not in str(settings.sasl_password)
    assert alertmanager_headers(settings) == {"Authorization": f"Bearer {SECRET}-token"}


def test_alertmanager_basic_auth_header():
    settings = _settings(alertmanager_url="http://am:9093", alertmanager_username="slo",
                         alertmanager_password=SECRET)
    # RFC 7617: base64 of user:password
    assert alertmanager_headers(settings) == {"Authorization": "Basic c2xvOmh1bnRlcjItdGVzdC1zZWNyZXQ="}
    assert alertmanager_headers(_settings()) == {}


def test_client_options_for_each_protocol(certificates):
    assert kafka_client_options(_settings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(_settings()) is None

    sasl = _settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="worker",
                     sasl_password=SECRET)
    assert kafka_client_options(sasl) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                                          "sasl_plain_username": "worker", "sasl_plain_password": SECRET}
    credentials = faust_broker_credentials(sasl)
    assert isinstance(credentials, SASLCredentials) and credentials.protocol is AuthProtocol.SASL_PLAINTEXT
    assert (credentials.mechanism.value, credentials.username, credentials.password) == ("SCRAM-SHA-256", "worker",
                                                                                         SECRET)

    tls = _settings(security_protocol="SSL", ssl_cafile=certificates.cafile, ssl_certfile=certificates.client_certfile,
                    ssl_keyfile=certificates.client_keyfile)
    options = kafka_client_options(tls)
    assert set(options) == {"security_protocol", "ssl_context"} and options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == ["slostream test CA"]
    assert isinstance(faust_broker_credentials(tls), SSLCredentials)

    both = _settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="worker",
                     sasl_password=SECRET, ssl_cafile=certificates.cafile)
    options = kafka_client_options(both)
    assert options["security_protocol"] == "SASL_SSL" and isinstance(options["ssl_context"], ssl.SSLContext)
    assert faust_broker_credentials(both).protocol is AuthProtocol.SASL_SSL


@pytest.mark.parametrize("url, shown", [
    ("https://hooks.slack.com/services/T0/B0/XXXX", "https://hooks.slack.com/***"),
    ("http://user:pw@am:9093/api", "http://am:9093/***"),
    ("http://user:pw@am:9093", "http://am:9093"),
    ("https://example.com/?token=abc", "https://example.com/***"),
    ("http://am:9093/", "http://am:9093"),
    ("not a url", "***"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_log_records_are_redacted_in_message_arguments_and_traceback(tmp_path):
    settings = _settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                         sasl_password=SECRET, webhook_urls=f"https://hooks.example/services/{SECRET}-hook")
    factory = logging.getLogRecordFactory()
    handler = logging.FileHandler(tmp_path / "log")
    logger = logging.getLogger("test-redaction")
    logger.addHandler(handler)
    try:
        redact_logs(settings)
        logger.error("password %s in arguments", SECRET)
        logger.error(f"url {settings.webhook_urls[0].reveal()} in the message")
        logger.error("path %s alone", f"/services/{SECRET}-hook")
        try:
            raise RuntimeError(f"failed with {SECRET}")
        except RuntimeError:
            logger.exception("traceback")
        logger.error("a Secret formatted: %s %r", settings.sasl_password, settings.sasl_password)
        # Faust's workers format with mode's formatter, which re-reads the arguments.
        record = logger.makeRecord("test", logging.ERROR, __file__, 1, "mode %s", (SECRET,), None)
        mode_formatted = ExtensionFormatter().format(record)
    finally:
        logging.setLogRecordFactory(factory)
        logger.removeHandler(handler)
        handler.close()
    text = (tmp_path / "log").read_text()
    assert SECRET not in text
    assert "password *** in arguments" in text and "url https://hooks.example/*** in the message" in text
    assert "path /*** alone" in text and "RuntimeError: failed with ***" in text
    assert "a Secret formatted: *** Secret('***')" in text
    assert mode_formatted.endswith("mode ***")


def test_a_non_ascii_password_is_redacted_from_a_bytes_repr_too(tmp_path):
    password = "pässwörd-" + SECRET
    settings = _settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                         sasl_password=password)
    factory = logging.getLogRecordFactory()
    try:
        redact_logs(settings)
        record = logging.getLogger("test").makeRecord("test", logging.DEBUG, __file__, 1, "request %r",
                                                      (b"u\x00u\x00" + password.encode(),), None)
    finally:
        logging.setLogRecordFactory(factory)
    assert record.getMessage() == "request b'u\\x00u\\x00***'"


def test_secret_equality_and_hash_follow_the_value():
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b") and Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1


def test_the_embedded_broker_is_refused_with_a_security_protocol():
    result = subprocess.run([sys.executable, "-m", "slostream", "run"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SLOSTREAM_SECURITY_PROTOCOL": "SSL"})
    assert result.returncode == 2
    assert "field 'security_protocol' is SSL, but no broker is set" in result.stderr and "Fix:" in result.stderr

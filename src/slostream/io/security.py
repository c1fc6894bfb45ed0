"""Kafka security from the settings: the keyword arguments every aiokafka client gets, and the
same for Faust and for a worker started as a child process. Every client the daemon, a command or
the bench makes takes its security from here, so a setting cannot reach some clients and miss
others. And the redaction of every secret from logs."""

from __future__ import annotations

import logging
import os
from typing import Any

from aiokafka.helpers import create_ssl_context
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from slostream.config import ENV_PREFIX, Settings, redact_url


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``:
    ``security_protocol``, and the TLS context and SASL credentials it needs."""
    protocol = settings.security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.ssl_cafile, certfile=settings.ssl_certfile,
                                                    keyfile=settings.ssl_keyfile)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.sasl_password.reveal())
    return options


# Every setting of Kafka security, as the environment variables that carry it to a child process.
SECURITY_ENV = tuple(f"{ENV_PREFIX}{name.upper()}" for name in (
    "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file", "ssl_cafile",
    "ssl_certfile", "ssl_keyfile"))


def security_environment(settings: Settings, secrets_dir: str) -> dict[str, str]:
    """``SLOSTREAM_*`` variables that give a child process (a worker) the same Kafka security. The
    password goes by file, never as a value (an environment is passed on to every grandchild and shown
    by ``ps e``): the settings' own file if they named one, else one written, owner-only, in
    ``secrets_dir``."""
    env = {f"{ENV_PREFIX}{name.upper()}": getattr(settings, name)
           for name in ("security_protocol", "sasl_mechanism", "sasl_username", "ssl_cafile", "ssl_certfile",
                        "ssl_keyfile") if getattr(settings, name)}
    password_file = settings.sasl_password_file
    if password_file is None and settings.sasl_password is not None:
        password_file = os.path.join(secrets_dir, "sasl_password")
        with os.fdopen(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(settings.sasl_password.reveal())
    if password_file is not None:
        env[f"{ENV_PREFIX}SASL_PASSWORD_FILE"] = os.path.abspath(password_file)
    return env


def faust_broker_credentials(settings: Settings) -> CredentialsT | None:
    """The Faust app's ``broker_credentials``: the same security for its consumer, producer and
    topic creation (Faust turns them back into aiokafka's arguments)."""
    options = kafka_client_options(settings)
    if "sasl_mechanism" in options:
        return SASLCredentials(username=options["sasl_plain_username"], password=options["sasl_plain_password"],
                               mechanism=options["sasl_mechanism"], ssl_context=options.get("ssl_context"))
    if "ssl_context" in options:
        return SSLCredentials(options["ssl_context"])
    return None


def secret_texts(settings: Settings) -> list[tuple[str, str]]:
    """(secret text, what a log line shows instead) for every secret of the settings."""
    texts = []
    for secret in (settings.sasl_password, settings.alertmanager_password, settings.alertmanager_bearer_token):
        if secret is not None and secret.reveal():
            texts.append((secret.reveal(), "***"))
            # As a bytes repr shows it: aiokafka logs its SASL PLAIN request at debug level.
            escaped = repr(secret.reveal().encode())[2:-1]
            if escaped != secret.reveal():
                texts.append((escaped, "***"))
    for url in settings.webhook_urls:
        full = url.reveal()
        texts.append((full, redact_url(full)))
        # A token in the path or query also shows alone (in an error that quotes the request path).
        rest = full.split("://", 1)[-1].partition("/")[2]
        if rest:
            texts.append(("/" + rest, "/***"))
    # Longest first, so that a whole URL is replaced before a part of it.
    return sorted(texts, key=lambda pair: -len(pair[0]))


def redact_logs(settings: Settings) -> None:
    """Replace every secret of the settings in every log record made from now on, by any library
    (its message, arguments and traceback), before a handler sees it."""
    texts = secret_texts(settings)
    if not texts:
        return
    make_record = logging.getLogRecordFactory()

    def redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is reported by the handler, as without this
            return record
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret, shown in texts:
            message = message.replace(secret, shown)
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, shown)
            if record.stack_info:
                record.stack_info = record.stack_info.replace(secret, shown)
        record.msg, record.args = message, ()  # () not None: mode's formatter wraps None into (None,)
        return record

    logging.setLogRecordFactory(redacted_record)

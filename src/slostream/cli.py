"""The ``slostream`` command: run, demo, validate, produce, tail, keygen, control, bench."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
import uuid
from pathlib import Path

from slostream.config import ConfigError, Settings, load_settings

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")

log = logging.getLogger("slostream")


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML settings file")
    parser.add_argument("--broker", help="kafka://host:port[,host:port]; unset starts the embedded broker")
    parser.add_argument("--web-host", help="bind address for /metrics, /health, /ready (default 127.0.0.1)")
    parser.add_argument("--web-port", help="port for the web views (default 6066)")
    parser.add_argument("--topic-prefix", help="prefix of every topic name (default 'slostream.')")
    parser.add_argument("--partitions", help="partitions of the measurement topic and state (default 4)")
    parser.add_argument("--app-id", help="consumer group and changelog name (default 'slostream')")
    parser.add_argument("--log-level", help="debug, info, warning or error")


def _settings(args: argparse.Namespace, **overrides) -> Settings:
    flags = {
        "broker": args.broker,
        "web_host": args.web_host,
        "web_port": args.web_port,
        "topic_prefix": args.topic_prefix,
        "partitions": args.partitions,
        "app_id": args.app_id,
        "log_level": args.log_level,
        **overrides,
    }
    return load_settings(args.config, os.environ, flags)


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML settings file")
    parser.add_argument("--broker", help="kafka://host:port[,host:port] (the worker logs the embedded broker's)")
    parser.add_argument("--topic-prefix", help="prefix of every topic name (default 'slostream.')")


def _client_settings(args: argparse.Namespace) -> Settings:
    from slostream.io.security import redact_logs

    settings = load_settings(args.config, os.environ, {"broker": args.broker, "topic_prefix": args.topic_prefix})
    if settings.broker is None:
        raise ConfigError("field 'broker' is not set. Fix: pass --broker kafka://host:port (a worker started "
                          "without one logs the embedded broker's address) or set SLOSTREAM_BROKER.")
    redact_logs(settings)
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slostream", description="Streaming SLO daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a worker")
    _add_settings_flags(run)
    demo = sub.add_parser("demo", help="embedded broker, a worker and synthetic services with an incident")
    demo.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--web-port", type=int, default=None)
    validate = sub.add_parser("validate", help="check SLO and policy definition files (slostream YAML or "
                                               "OpenSLO v1) and print every problem")
    validate.add_argument("files", nargs="+", metavar="FILE")
    produce = sub.add_parser("produce", help="send measurements (JSON lines, or a JSON array) from a file or stdin "
                                             "to the measurement topic, keyed by service, batched")
    _add_client_flags(produce)
    produce.add_argument("file", nargs="?", default="-", help="input file (default: stdin)")
    produce.add_argument("--per-record", type=int, default=100, help="measurements per Kafka record (default 100)")
    produce.add_argument("--compression", choices=CODECS, default="none")
    tail = sub.add_parser("tail", help="print the events of an output topic, one JSON per line")
    _add_client_flags(tail)
    tail.add_argument("topic", help="sli, alerts, breaches, deadletter, ... (or a full topic name)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event, not the newest")
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--idle-exit", type=float, metavar="SECONDS", help="exit after this long without an event")
    keygen = sub.add_parser("keygen", help="write an Ed25519 key pair for signing control commands: NAME.key "
                                           "(private, PKCS#8 PEM) and NAME.pub (public, as openssl pkey -pubout "
                                           "writes)")
    keygen.add_argument("name", metavar="NAME", help="path and name of the pair, without .key/.pub")
    control = sub.add_parser("control", help="send a control command (signed with --key) to the control topic")
    _add_client_flags(control)
    control.add_argument("--key", metavar="NAME.key", help="private key to sign with (unset: send unsigned)")
    control.add_argument("--key-id", help="key id the workers know the key by (default: the key file's name "
                                          "without .key)")
    control.add_argument("--by", help="who sends the command (default: the key id)")
    commands = control.add_subparsers(dest="control_command", required=True)
    silence = commands.add_parser("silence", help="silence the alerts whose labels match")
    silence.add_argument("--match", action="append", required=True, metavar="LABEL=VALUE",
                         help="a label the silenced alerts carry (repeat for more)")
    lasting = silence.add_mutually_exclusive_group(required=True)
    lasting.add_argument("--for", dest="for_", metavar="DURATION", help="how long: 30m, 2h, 1d, 1w")
    lasting.add_argument("--until", help="until when: RFC 3339 with a zone, e.g. 2026-11-22T18:00:00Z")
    silence.add_argument("--reason", default="", help="why (kept with the silence and in the audit)")
    unsilence = commands.add_parser("unsilence", help="lift a silence")
    unsilence.add_argument("silence_id", help="the silence's id (the id of the command that made it)")
    ack = commands.add_parser("ack", help="acknowledge firing alerts (stops escalation)")
    target = ack.add_mutually_exclusive_group(required=True)
    target.add_argument("--fingerprint", help="the alert's fingerprint (from its alert event)")
    target.add_argument("--match", action="append", metavar="LABEL=VALUE", help="a label the alerts carry")
    recommend = commands.add_parser("recommend", help="ask for recommended levels or an SLO's threshold now")
    what = recommend.add_mutually_exclusive_group(required=True)
    what.add_argument("--policy", help="the policy whose levels to recommend")
    what.add_argument("--slo", help="the threshold SLO whose threshold to recommend")
    bench = sub.add_parser("bench", help="measure throughput against the embedded broker, or --broker")
    bench.add_argument("--config", help="YAML settings file (its broker and Kafka security are used)")
    bench.add_argument("--broker", help="kafka://host:port[,host:port]: run the broker parts against it, with the "
                                        "settings' Kafka security; unset starts the embedded broker")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--batched-records", type=int, default=20_000)
    bench.add_argument("--single-records", type=int, default=300_000)
    bench.add_argument("--rounds", type=int, default=5, help="interleaved runs with and without SLOs")
    bench.add_argument("--only", metavar="PART[,PART]", help="run just these parts (see slostream.bench.PARTS)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_worker(_settings(args))
        if args.command == "demo":
            from slostream.demo import run_demo

            return run_demo(args.duration, args.web_port)
        if args.command == "validate":
            return validate_files(args.files)
        if args.command == "produce":
            from slostream.io.clients import run_produce

            return run_produce(_client_settings(args), args.file, args.per_record, args.compression)
        if args.command == "tail":
            from slostream.io.clients import run_tail

            return run_tail(_client_settings(args), args.topic, args.from_beginning, args.count, args.idle_exit)
        if args.command == "keygen":
            return write_key_pair(args.name)
        if args.command == "control":
            from slostream.io.clients import run_control

            doc = control_command(args)
            return run_control(_client_settings(args), sign_command(doc, args))
        if args.command == "bench":
            from slostream.bench import run_bench
            from slostream.io.security import redact_logs

            settings = load_settings(args.config, os.environ, {"broker": args.broker})
            redact_logs(settings)
            return run_bench(settings, args.batched_records, args.single_records, args.json, args.rounds, args.only)
    except ConfigError as exc:
        print(f"slostream: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


def validate_files(files: list[str]) -> int:
    from slostream.definitions.native import load_definition_file

    failed = False
    for path in files:
        definitions, problems = load_definition_file(path)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            failed = True
        else:
            print(f"{path}: {len(definitions.slos)} SLO(s) and {len(definitions.policies)} policies valid")
    return 1 if failed else 0


def write_key_pair(name: str) -> int:
    from slostream.core.control import new_key_pair

    private, public = new_key_pair()
    key_file, pub_file = Path(f"{name}.key"), Path(f"{name}.pub")
    for file in (key_file, pub_file):
        if file.exists():
            raise ConfigError(f"{file} exists. Fix: choose another NAME, or remove the old pair first.")
    # Readable by its owner alone, from the moment it exists.
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(private)
    pub_file.write_bytes(public)
    print(f"slostream keygen: wrote {key_file} (keep it secret) and {pub_file} (for control_keys)", file=sys.stderr)
    return 0


def _matchers(pairs: list[str]) -> dict[str, str]:
    matchers = {}
    for pair in pairs:
        label, sep, value = pair.partition("=")
        if not sep or not label:
            raise ConfigError(f"flag --match is {pair!r}. Fix: write LABEL=VALUE, e.g. --match slo=checkout.")
        matchers[label] = value
    return matchers


def control_command(args: argparse.Namespace) -> dict:
    """The command object of ``slostream control`` (unsigned): with a unique id and issued_at."""
    key_id = args.key_id or (Path(args.key).name.removesuffix(".key") if args.key else None)
    doc = {"command": args.control_command, "id": uuid.uuid4().hex, "issued_at": int(time.time())}
    by = args.by or key_id
    if by:
        doc["by"] = by
    if key_id:
        doc["key_id"] = key_id
    if args.control_command == "silence":
        doc["matchers"] = _matchers(args.match)
        doc.update({"for": args.for_} if args.for_ else {"until": args.until})
        if args.reason:
            doc["reason"] = args.reason
    elif args.control_command == "unsilence":
        doc["silence_id"] = args.silence_id
    elif args.control_command == "ack":
        doc.update({"fingerprint": args.fingerprint} if args.fingerprint else {"matchers": _matchers(args.match)})
    else:
        doc.update({"policy": args.policy} if args.policy else {"slo": args.slo})
    return doc


def sign_command(doc: dict, args: argparse.Namespace) -> dict:
    from slostream.core.control import private_key_of_pem, sign

    if not args.key:
        return doc
    try:
        key = private_key_of_pem(Path(args.key).read_bytes())
    except OSError as exc:
        raise ConfigError(f"flag --key: cannot read {args.key} ({exc.strerror}). Fix: pass the NAME.key that "
                          "`slostream keygen NAME` wrote.") from None
    except ValueError as exc:
        raise ConfigError(f"flag --key: {args.key}: {exc}. Fix: pass an Ed25519 private key in PEM, as "
                          "`slostream keygen NAME` or `openssl genpkey -algorithm ed25519` writes it.") from None
    return sign(doc, key)


def make_worker(app, log_level: str):
    """A Faust worker logging at ``log_level``, without Faust's terminal spinner: at level warning
    and above the spinner sets the root logger to DEBUG, so every library debug call (aiokafka
    makes one per message sent) would build a log record, a third of a catching-up worker's time."""
    import faust

    worker = faust.Worker(app, loglevel=log_level.upper(), quiet=True)
    worker.spinner = None
    return worker


def run_worker(settings: Settings) -> int:
    from slostream.io.app import create_app
    from slostream.io.broker import EmbeddedBroker
    from slostream.io.security import redact_logs
    from slostream.io.topics import ensure_topics, fence_changelog

    redact_logs(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = None
    if settings.broker is None and settings.security_protocol != "PLAINTEXT":
        raise ConfigError(f"field 'security_protocol' is {settings.security_protocol}, but no broker is set and the "
                          "embedded broker speaks PLAINTEXT only. Fix: set broker, or leave security_protocol unset.")
    if settings.broker is None:
        broker = EmbeddedBroker().start()
        settings = dataclasses.replace(settings, broker=broker.url)
        log.warning("embedded broker at %s (memory-only: state lasts as long as this process)", broker.url)
    elif settings.security_protocol == "PLAINTEXT":
        log.warning("Kafka security_protocol is PLAINTEXT: the broker does not know who this worker is, and "
                    "anyone on the network path can read and write its traffic (see README, Threat model)")
    elif settings.security_protocol == "SASL_PLAINTEXT" and settings.sasl_mechanism == "PLAIN":
        log.warning("sasl_mechanism PLAIN over SASL_PLAINTEXT sends the password in clear text; use SASL_SSL "
                    "or SCRAM")
    try:
        cluster_id = asyncio.run(ensure_topics(settings))
        if settings.changelog_fence is None:
            # Tansu misreports end offsets after multi-record batches (see README).
            tansu = cluster_id.startswith("tansu")
            settings = dataclasses.replace(settings, changelog_fence=tansu)
            if tansu:
                log.info("broker is Tansu (cluster id %r): checkpoints end with a one-record batch", cluster_id)
        if settings.changelog_fence:
            asyncio.run(fence_changelog(settings))
        make_worker(create_app(settings), settings.log_level).execute_from_commandline()
    finally:
        if broker is not None:
            broker.stop()
    return 0

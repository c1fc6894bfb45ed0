"""The ``slostream`` command: run, demo, validate, produce, tail, bench."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys

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
    bench = sub.add_parser("bench", help="measure throughput against the embedded broker")
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
        if args.command == "bench":
            from slostream.bench import run_bench

            return run_bench(args.batched_records, args.single_records, args.json, args.rounds, args.only)
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
    from slostream.io.topics import ensure_topics

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
        make_worker(create_app(settings), settings.log_level).execute_from_commandline()
    finally:
        if broker is not None:
            broker.stop()
    return 0

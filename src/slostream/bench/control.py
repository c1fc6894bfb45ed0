"""Control commands in-process: what checking a signed command costs (goal: at most 1 ms), and how
long a ``recommend`` of a policy over 10,000 series holds the worker's event loop at a time (the
worker yields between the series ``PartitionProcessor.apply_control`` hands out one by one; goal:
under 1 s).

The 10,000 series share one learned model: learning ten thousand models over a week of windows
would take the bench many minutes, and a recommendation costs the same whichever model it reads.
``fuzz`` sends a million mutated commands through the judgement and the application of its audit.
"""

from __future__ import annotations

import copy
import time
import uuid

import numpy as np
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slostream.config import Settings, pipeline_config
from slostream.core.control import ControlAuth, ControlKey, ControlLimits, sign
from slostream.core.objectives import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord

COMMANDS = 2000  # signed commands checked
RECOMMEND_SERIES = 10_000
LEARNED_DAYS = 8  # the balanced strategy recommends after 7 days of history
EVERY_S = 30
WINDOW = 300
T0 = 1_800_000_000 // WINDOW * WINDOW


def _auth() -> tuple[Ed25519PrivateKey, ControlAuth]:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, ControlAuth((ControlKey("ops", raw, ("silence", "recommend")),))


def signature_cost(commands: int = COMMANDS) -> dict:
    """Microseconds per command: the signature check alone, and the whole judgement (read, check,
    limits, audit event) by partition 0's processor."""
    key, auth = _auth()
    now = time.time()
    docs = [sign({"command": "silence", "matchers": {"slo": "checkout"}, "for": "2h", "by": "ops",
                  "id": uuid.uuid4().hex, "issued_at": now, "key_id": "ops"}, key) for _ in range(commands)]
    started = time.perf_counter()
    refused = [auth.check(doc, now, {}) for doc in docs]
    check_s = time.perf_counter() - started
    assert not any(refused)
    proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1)), now)
    records = [SourceRecord("control", 0, n, now, None, orjson.dumps(doc)) for n, doc in enumerate(docs)]
    limits = ControlLimits(max_silences=commands + 1)
    started = time.perf_counter()
    for record in records:
        proc.judge_control(record, now, auth, limits)
    judge_s = time.perf_counter() - started
    return {"commands": commands, "signature_check_us": round(check_s / commands * 1e6, 1),
            "judge_us_per_command": round(judge_s / commands * 1e6, 1)}


FUZZED = 1_000_000


def fuzz(records: int = FUZZED, seed: int = 5) -> dict:
    """``records`` control records, each a seed command (signed or not, valid or not) with random
    bytes flipped, cut or inserted, judged by partition 0's processor (every other one with keys
    configured, the rest without, so that mutated commands are applied too), and its audit event
    applied by partition 0 and by partition 1: that none raises, and the outcomes."""
    key, auth = _auth()
    auths = (auth, ControlAuth())
    now = time.time()
    seeds = [orjson.dumps(doc) for doc in (
        sign({"command": "silence", "matchers": {"slo": "checkout"}, "for": "2h", "by": "ops", "id": "s",
              "issued_at": now, "key_id": "ops"}, key),
        {"command": "silence", "matchers": {"slo": "a"}, "until": "2026-11-22T18:00:00Z", "id": "u"},
        {"command": "unsilence", "silence_id": "s", "by": "ops"},
        {"command": "ack", "fingerprint": "758851f0a38aca21", "by": "ana"},
        {"command": "recommend", "policy": "p99"},
        {"command": "silence", "matchers": {"slo": "a"}, "for": "9" * 400 + "w"},
    )]
    config = pipeline_config(Settings(partitions=2))
    judge, other = PartitionProcessor(0, config, now), PartitionProcessor(1, config, now)
    limits = ControlLimits()
    rng = np.random.default_rng(seed)
    picks, edits = rng.integers(0, len(seeds), records), rng.integers(0, 4, records)
    positions, values = rng.random(records), rng.integers(0, 256, records)
    outcomes: dict[str, int] = {}
    started = time.perf_counter()
    for n in range(records):
        raw = bytearray(seeds[picks[n]])
        at = int(positions[n] * len(raw))
        if edits[n] == 0:
            raw[at] = values[n]
        elif edits[n] == 1:
            del raw[at:]
        elif edits[n] == 2:
            raw.insert(at, values[n])
        _, event = judge.judge_control(SourceRecord("control", 0, n, now, None, bytes(raw)), now, auths[n % 2],
                                        limits)
        audit = SourceRecord("audit", 0, n, now, None, orjson.dumps(event))
        for proc in (judge, other):
            for _ in proc.apply_control(audit):
                pass
        reason = event["data"]["reason"] or "applied"
        outcomes[reason] = outcomes.get(reason, 0) + 1
    seconds = time.perf_counter() - started
    assert judge.control_offset == other.control_offset == records - 1
    return {"records": records, "audited": sum(outcomes.values()), "outcomes": dict(sorted(outcomes.items())),
            "us_per_record": round(seconds / records * 1e6, 1)}


def _learned(series: int) -> PartitionProcessor:
    """A processor with ``series`` series of one p95 policy, each with a model ready to recommend."""
    policy = Policy("api-p95", "api", "latency_ms", "p95", WINDOW, "above", warning=150.0, critical=300.0)
    config = pipeline_config(Settings(partitions=1, grace_s=5.0, label_keys=("host",), policies=(policy,)))
    proc = PartitionProcessor(0, config, 0.0)
    rng = np.random.default_rng(3)
    ts = T0 + EVERY_S * np.arange(LEARNED_DAYS * 86400 // EVERY_S)
    values = 100 * rng.lognormal(0, 0.25, ts.size)
    items = [{"service": "api", "metric": "latency_ms", "labels": {"host": "h0"}, "ts": t, "value": v}
             for t, v in zip(ts.tolist(), values.tolist())]
    for n, first in enumerate(range(0, len(items), 1000)):
        chunk = items[first:first + 1000]
        proc.process([SourceRecord("m", 0, n, chunk[-1]["ts"], None, orjson.dumps(chunk))], 0.0)
    learned = next(iter(proc.series.values()))
    for n in range(1, series):
        clone = copy.copy(learned)
        clone.labels = {"host": f"h{n}"}
        clone.ident = (*learned.ident[:2], (f"h{n}",))
        clone.key = orjson.dumps(["api", "latency_ms", clone.labels]).decode()
        proc.series[clone.ident] = clone
    return proc


def recommend_holds(series: int = RECOMMEND_SERIES) -> dict:
    """Seconds of the longest step of a ``recommend`` over ``series`` series (the longest the event
    loop is held), the whole command's, and the recommendations made."""
    proc = _learned(series)
    now = time.time()
    control = SourceRecord("control", 0, 0, now, None, orjson.dumps({"command": "recommend", "policy": "api-p95"}))
    _, event = proc.judge_control(control, now, ControlAuth(), ControlLimits())
    audit = SourceRecord("audit", 0, 0, now, None, orjson.dumps(event))
    holds, made = [], 0
    parts = proc.apply_control(audit)
    while True:
        started = time.perf_counter()
        part = next(parts, None)
        holds.append(time.perf_counter() - started)
        if part is None:
            break
        made += len(part.recommendations)
    return {"series": len(proc.series), "steps": len(holds) - 1, "recommendations": made,
            "longest_hold_s": round(max(holds), 3), "total_s": round(sum(holds), 3)}


def control_part() -> dict:
    return {**signature_cost(), "fuzz": fuzz(), "recommend": recommend_holds()}

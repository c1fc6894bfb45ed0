"""Hypothesis-driven fuzzing of every input path of the pure pipeline: measurement records (any
bytes, any JSON, huge and odd numbers, long names, many labels), record headers and keys, and state
changelog records at a restore. Nothing raises; every record is accepted or dead-lettered with a
reason; every output is finite JSON; a restored partition keeps working."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slostream.core.budget import default_tiers
from slostream.core.objectives import GoodRule, Policy, Slo, SloWindow
from slostream.pipeline.alignment import PROGRESS_HEADER
from slostream.pipeline.ownership import FORWARD_HEADER
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.hostile import (
    NOW,
    check_output,
    expected_units,
    headers,
    measurement_values,
    mutated,
    record_keys,
    record_timestamps,
    state_key,
    state_values,
)
from tests.pipeline_sim import make_config

SLO = Slo(name="co", service="checkout", metric="checkout", objective=0.999, window=SloWindow(rolling_s=86400),
          good=GoodRule("ok"), tiers=default_tiers(86400))
POLICY = Policy("co-p95", "checkout", "checkout", "p95", 60, "above", warning=90.0, critical=140.0)
CONFIGS = {partitions: make_config(partitions=partitions, slos=(SLO,), policies=(POLICY,), label_keys=("k",))
           for partitions in (1, 2)}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(proc: PartitionProcessor, records: list[SourceRecord]) -> list:
    """Process, tick an hour later (every window closes) and checkpoint; every output checked."""
    outs = [proc.process(records, NOW), proc.tick(NOW + 3600)]
    for out in outs:
        check_output(out)
    writes, _ = proc.checkpoint(final=True)
    return [outs, list(writes)]


@FUZZ
@given(st.lists(st.tuples(measurement_values, record_keys, record_timestamps), min_size=1, max_size=8))
def test_any_measurement_record_is_accepted_or_dead_lettered(records):
    config = CONFIGS[1]
    source = [SourceRecord("m", 0, offset, ts, key, value) for offset, (value, key, ts) in enumerate(records)]
    proc = PartitionProcessor(0, config, now=NOW)
    (processed, _), writes = _run(proc, source)
    assert processed.accepted + len(processed.deadletter) == sum(
        expected_units(value, config.max_record_bytes) for value, _, _ in records)
    restored = PartitionProcessor.restore(0, config, writes, NOW + 3600)
    assert restored.unreadable_state == 0
    assert len(restored.series) == len(proc.series)


@FUZZ
@given(st.lists(st.tuples(measurement_values, record_keys, headers), min_size=1, max_size=6), st.integers(0, 1))
def test_any_headers_leave_the_partition_working(records, partition):
    config = CONFIGS[2]
    source = [SourceRecord("m", partition, offset, NOW - 5, key, value, head)
              for offset, (value, key, head) in enumerate(records)]
    proc = PartitionProcessor(partition, config, now=NOW)
    _run(proc, source)
    good = SourceRecord("m", partition, len(source), NOW, b"checkout",
                        b'{"service":"checkout","metric":"checkout","ok":true}')
    check_output(proc.process([good], NOW + 3601))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1), st.data()), max_size=8), st.data())
def test_any_state_record_is_read_or_counted_and_the_partition_works(choices, data):
    config = CONFIGS[1]
    base = PartitionProcessor(0, config, now=NOW)
    _, valid = _run(base, [SourceRecord("m", 0, i, NOW - 30, b"checkout", value) for i, value in enumerate([
        b'{"service":"checkout","metric":"checkout","value":120,"ok":false,"labels":{"k":"a"}}',
        b'[{"service":"api","metric":"lat","value":3,"ts":%d},{"service":"checkout","metric":"checkout","ok":true}]'
        % (NOW - 40),
    ])])
    items = [(key, value) for key, value in valid if value is not None]
    for kind, draw in choices:
        if kind == 0 or not items:
            items.append((draw.draw(state_key(0)), draw.draw(state_values)))
        else:
            at = draw.draw(st.integers(0, len(items) - 1))
            key, value = items[at]
            items[at] = (key, mutated(value, draw))
    items = data.draw(st.permutations(items))
    proc = PartitionProcessor.restore(0, config, items, NOW + 3600)
    later = [SourceRecord("m", 0, max(proc.applied_offset, 0) + 1 + i, NOW + 3600, b"checkout", value)
             for i, value in enumerate([b'{"service":"checkout","metric":"checkout","value":5,"ok":true}',
                                        b'{"service":"api","metric":"lat","value":3}'])]
    for out in (proc.process(later, NOW + 3600), proc.tick(NOW + 7200)):
        check_output(out)
    writes, _ = proc.checkpoint(final=True)
    again = PartitionProcessor.restore(0, config, list(writes), NOW + 7200)
    assert again.unreadable_state == 0


def _genuine_forwards() -> list[bytes]:
    proc = PartitionProcessor(0, CONFIGS[2], now=NOW)
    values = [b'[{"service":"api","metric":"lat","value":3,"labels":{"k":"a"},"id":"x"},'
              b'{"service":"checkout","metric":"checkout","ok":false,"outcome":1}]'] * 3
    out = proc.process([SourceRecord("m", 0, i, NOW, None, value) for i, value in enumerate(values)], NOW)
    return [forward.value for forward in out.forwards + proc.progress(NOW).forwards]


GENUINE = _genuine_forwards()


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(GENUINE), st.data(), st.sampled_from(["forward", "progress"]),
                          st.sampled_from([b"0", b"1"])), min_size=1, max_size=4))
def test_a_genuine_forward_or_progress_mark_with_bytes_changed_is_no_crash(records):
    source = [SourceRecord("m", 1, offset, NOW - 5, None, mutated(value, data),
                           ((FORWARD_HEADER if kind == "forward" else PROGRESS_HEADER, origin),))
              for offset, (value, data, kind, origin) in enumerate(records)]
    _run(PartitionProcessor(1, CONFIGS[2], now=NOW), source)

"""The worker hands on the measurement partitions it owns in record-timestamp order (``io.catch_up``)."""

from faust.types import TP

from slostream.io.catch_up import MAX_IDLE_S, ORDER_SLACK_S, TimestampOrder
from slostream.pipeline.types import SourceRecord

A, B, C = (TP("m", p) for p in range(3))


def _records(tp: TP, times: list[float], first: int = 0) -> list[SourceRecord]:
    return [SourceRecord("m", tp.partition, offset, t, None, b"{}") for offset, t in enumerate(times, first)]


def test_partitions_go_oldest_first_in_runs_up_to_the_next_head_plus_the_slack():
    order = TimestampOrder()
    order.add(A, _records(A, [0.0, 30.0, 100.0, 3600.0, 3700.0]))
    order.add(B, _records(B, [50.0, 3000.0, 3650.0]))
    runs = [(tp.partition, [r.timestamp for r in run]) for tp, run in order.runs({A, B}, lambda tp: False)]
    # A runs to B's head (50) plus the slack, then B to A's next head (3600) plus it.
    assert runs == [(0, [0.0, 30.0, 100.0]), (1, [50.0, 3000.0, 3650.0]), (0, [3600.0, 3700.0])]
    assert ORDER_SLACK_S == 60.0  # the runs above are cut by it


def test_an_empty_partition_with_more_on_the_broker_holds_the_others_for_a_while():
    now = [0.0]
    order = TimestampOrder(clock=lambda: now[0])
    order.add(A, _records(A, [0.0, 10.0]))
    assert list(order.runs({A, B}, lambda tp: tp == B)) == []  # B may hold older records: wait
    now[0] = MAX_IDLE_S - 0.1
    assert list(order.runs({A, B}, lambda tp: tp == B)) == []
    now[0] = MAX_IDLE_S
    assert [tp for tp, _ in order.runs({A, B}, lambda tp: tp == B)] == [A]  # no longer
    order.add(A, _records(A, [20.0], first=2))
    assert [tp for tp, _ in order.runs({A, B, C}, lambda tp: False)] == [A]  # B and C at their end: no wait


def test_a_rebalance_forgets_what_was_buffered():
    order = TimestampOrder()
    order.add(A, _records(A, [0.0]))
    order.forget()
    assert list(order.runs({A}, lambda tp: False)) == []


def test_a_partition_past_its_read_ahead_limit_is_held_and_runs_stop_at_the_limit():
    order = TimestampOrder()
    order.add(A, _records(A, [0.0, 10.0, 20.0, 30.0]))
    order.add(B, _records(B, [500.0, 510.0]))
    limits = {A: 15.0, B: 100.0}
    runs = [(tp.partition, [r.timestamp for r in run]) for tp, run in order.runs({A, B}, lambda tp: False,
                                                                                  lambda: limits)]
    assert runs == [(0, [0.0, 10.0])]  # A up to its limit; B's head is past its own
    assert order.held({A, B}, limits) == {A, B}
    limits[A], limits[B] = 25.0, float("inf")  # the others read on: the limits move
    runs = [(tp.partition, [r.timestamp for r in run]) for tp, run in order.runs({A, B}, lambda tp: False,
                                                                                  lambda: limits)]
    assert runs == [(0, [20.0]), (1, [500.0]), (1, [510.0])]  # B's runs end past A's held head plus the slack
    assert order.held({A, B}, limits) == {A}

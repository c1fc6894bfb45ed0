"""The group lease (``io.fencing``): held within one session timeout of an accepted heartbeat's
send time, and once run out, renewed only by a new generation."""

from slostream.io.fencing import GroupLease


def test_no_lease_before_the_first_join():
    lease = GroupLease(10.0)
    assert not lease.held(5.0) and lease.lapses == 0


def test_heartbeats_renew_the_lease_of_their_generation():
    lease = GroupLease(10.0)
    lease.joined(3, sent_at=100.0)
    assert lease.held(109.9)
    lease.heartbeat_accepted(3, sent_at=105.0)
    assert lease.held(114.9)
    lease.heartbeat_accepted(2, sent_at=114.0)  # an answer of an older generation renews nothing
    assert not lease.held(115.0)


def test_a_lease_that_ran_out_comes_back_only_with_a_new_generation():
    lease = GroupLease(10.0)
    lease.joined(3, sent_at=100.0)
    assert not lease.held(110.0)  # a pause or an outage as long as the session timeout
    lease.heartbeat_accepted(3, sent_at=111.0)  # the old generation's coordinator may still answer
    assert not lease.held(111.5) and lease.lapses == 1
    lease.joined(4, sent_at=120.0)
    assert lease.held(121.0) and lease.lapses == 1


def test_a_lapse_is_counted_even_when_the_rejoin_comes_before_anyone_looks():
    lease = GroupLease(10.0)
    lease.joined(3, sent_at=100.0)
    lease.joined(4, sent_at=112.0)  # paused past the session timeout, and rejoined at once
    assert lease.held(113.0) and lease.lapses == 1

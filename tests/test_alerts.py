"""Alert lifecycle, pure: fire, dedup, resolve, inhibit, silence, ack, escalate, cooldown, restore."""

from slostream.core.alerts import AlertBook, Condition, Silence, escalated, fingerprint

PAGE = {"alertname": "SLOErrorBudgetBurn", "slo": "checkout", "service": "checkout", "severity": "page"}
TICKET = {**PAGE, "severity": "ticket"}


def _types(events):
    return [(e.type, e.alert["labels"]["severity"]) for e in events]


def test_fingerprint_is_stable_and_order_free():
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint(PAGE) != fingerprint(TICKET)


def test_one_firing_and_one_resolved_event_per_episode():
    book = AlertBook(cooldown_s=0)
    events = []
    for t in range(0, 100, 10):
        events += book.evaluate(float(t), [Condition(PAGE, 20 <= t < 60, {"summary": f"t={t}"})])
    assert _types(events) == [("firing", "page"), ("resolved", "page")]
    firing, resolved = events
    assert firing.alert["status"] == "firing" and firing.alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved.alert["startsAt"] == firing.alert["startsAt"] and resolved.alert["status"] == "resolved"
    assert resolved.alert["annotations"] == {"summary": "t=50"}
    assert firing.alert["fingerprint"] == fingerprint(PAGE)


def test_a_firing_page_inhibits_the_ticket_of_the_same_slo():
    book = AlertBook(cooldown_s=0)
    other_ticket = {**TICKET, "slo": "search"}
    both = book.evaluate(0.0, [Condition(PAGE, True), Condition(TICKET, True), Condition(other_ticket, True)])
    assert [(e.type, e.alert["labels"]["slo"], e.alert["labels"]["severity"]) for e in both] == [
        ("firing", "checkout", "page"), ("firing", "search", "ticket")]
    after = book.evaluate(10.0, [Condition(PAGE, False), Condition(TICKET, True), Condition(other_ticket, True)])
    assert _types(after) == [("resolved", "page"), ("firing", "ticket")]


def test_silence_holds_back_firing_and_its_end_releases_it():
    book = AlertBook(cooldown_s=0)
    assert book.silence(0.0, Silence("s1", {"slo": "checkout"}, until=100.0, by="ana", reason="deploy")) == []
    assert _types(book.evaluate(10.0, [Condition(PAGE, True)])) == [("silenced", "page")]
    assert book.evaluate(50.0, [Condition(PAGE, True)]) == []
    assert _types(book.evaluate(100.0, [Condition(PAGE, True)])) == [("firing", "page")]
    assert _types(book.silence(110.0, Silence("s2", {"severity": "page"}, until=500.0))) == [("silenced", "page")]
    assert _types(book.unsilence(120.0, "s2")) == [("firing", "page")]


def test_unacknowledged_alert_escalates_and_acknowledged_one_does_not():
    book = AlertBook(cooldown_s=0, escalate_after_s=600)
    warning = {**PAGE, "severity": "warning"}
    book.evaluate(0.0, [Condition(TICKET, True), Condition(warning, True)])
    acked = book.acknowledge(60.0, fingerprint(warning), by="ana")
    assert _types(acked) == [("acknowledged", "warning")]
    assert acked[0].alert["annotations"]["acknowledged_by"] == "ana"
    assert book.acknowledge(61.0, fingerprint(warning), by="ana") == []
    events = book.evaluate(600.0, [Condition(TICKET, True), Condition(warning, True)])
    assert _types(events) == [("resolved", "ticket"), ("firing", "page")]
    assert events[1].alert["annotations"]["escalated_from"] == "ticket"
    assert escalated("page") is None and escalated("critical") == "emergency"


def test_flapping_alert_waits_out_the_cooldown():
    book = AlertBook(cooldown_s=300)
    timeline = [(0, True), (60, False), (120, True), (300, True), (360, True), (420, False)]
    events = []
    for t, holds in timeline:
        events += [(t, e.type) for e in book.evaluate(float(t), [Condition(PAGE, holds)])]
    assert events == [(0, "firing"), (60, "resolved"), (360, "firing"), (420, "resolved")]


def test_restart_mid_incident_repeats_nothing():
    book = AlertBook(cooldown_s=0, escalate_after_s=None)
    book.silence(0.0, Silence("s1", {"slo": "search"}, until=1e12))
    first = book.evaluate(0.0, [Condition(PAGE, True)])
    restored = AlertBook.from_state(book.to_state())
    assert restored.to_state() == book.to_state()
    assert restored.evaluate(10.0, [Condition(PAGE, True)]) == []
    assert _types(restored.evaluate(20.0, [Condition(PAGE, False)])) == [("resolved", "page")]
    assert _types(first) == [("firing", "page")]

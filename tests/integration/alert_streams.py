"""An SLO and a policy on a checkout service with an incident, shared by the alert tests."""

import orjson

DEFINITIONS = """
slos:
  - name: checkout-availability
    service: checkout
    metric: http
    objective: 0.999
    window: 30d
    good: ok
    runbook_url: https://runbooks.example/checkout
policies:
  - name: checkout-p99
    service: checkout
    metric: latency_ms
    aggregate: p99
    window: 1m
    warning: 300
    critical: 800
    consecutive: 2
"""


def incident_history(base: float, start: int, stop: int, outage: tuple[int, int]) -> list[tuple[bytes, bytes]]:
    """One request a second, all failing during ``outage``; latency every 10 s, slow during the outage."""
    records = []
    for t in range(start, stop):
        bad = outage[0] <= t < outage[1]
        records.append((b"checkout", orjson.dumps({"service": "checkout", "metric": "http", "ts": base + t,
                                                   "ok": not bad})))
        if t % 10 == 0:
            records.append((b"checkout", orjson.dumps({"service": "checkout", "metric": "latency_ms",
                                                       "ts": base + t, "value": 1000.0 if bad else 120.0})))
    return records


def alerts_of(events, kind: str, severity: str) -> list[dict]:
    return [e for e in events if e["type"] == f"slostream.alert.{kind}" and e["data"]["labels"]["severity"] == severity]

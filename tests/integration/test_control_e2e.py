"""Signed control commands end to end: a real broker, real workers, `slostream keygen` and
`slostream control`. A signed silence is applied and audited once for the group, stays in force as
its partitions move between workers (a worker joins, then one stops) without being judged again,
and every bad command is refused with its reason on the audit topic while the workers keep
running. A command that makes judging or applying raise (an injected bug) stops no worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import orjson

from slostream.core.control import private_key_of_pem, sign
from tests.conftest import consume, produce
from tests.schemas import validator


def _silences(worker) -> set[str]:
    status, body = worker.get("/api/alerts")
    return {s["id"] for s in orjson.loads(body)["silences"]} if status == 200 else set()


def _wait_for(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    return check()


def test_signed_commands_are_judged_once_audited_and_kept_across_rebalances(kafka, make_worker, tmp_path):
    subprocess.run([sys.executable, "-m", "slostream", "keygen", str(tmp_path / "ops")], check=True)
    config = tmp_path / "slostream.yaml"
    config.write_text("control_keys:\n  ops:\n    public_key_file: ops.pub\n    commands: [silence, unsilence]\n")
    prefix = make_worker.prefix
    audit_topic = f"{prefix}audit"
    first = make_worker("control", config=str(config)).start()
    assert b"slostream_control_auth_enabled 1.0" in first.get("/metrics")[1]

    subprocess.run([sys.executable, "-m", "slostream", "control", "--broker", kafka.url, "--topic-prefix", prefix,
                    "--key", str(tmp_path / "ops.key"), "silence", "--match", "slo=checkout", "--for", "2h",
                    "--reason", "deploy"], check=True)
    applied = consume(kafka.bootstrap, audit_topic, lambda ev: len(ev) >= 1)[0]
    assert applied["type"] == "slostream.command.applied" and applied["data"]["key_id"] == "ops"
    silence_id = applied["data"]["command_id"]
    assert _wait_for(lambda: _silences(first) == {silence_id})

    # A second worker joins: each now holds one partition, the silence restored with it; one of
    # them judges.
    second = make_worker("control", config=str(config)).start()
    assert _wait_for(lambda: _silences(second) == {silence_id}), "the silence did not move with its partition"
    key = private_key_of_pem((tmp_path / "ops.key").read_bytes())

    def signed(doc: dict, issued_at: float | None = None) -> bytes:
        return orjson.dumps(sign({**doc, "id": uuid.uuid4().hex, "issued_at": issued_at or time.time(),
                                  "key_id": "ops"}, key))

    silence = {"command": "silence", "matchers": {"slo": "cart"}, "for": "1h", "by": "ops"}
    replayed = orjson.dumps(applied["data"]["command"])
    produce(kafka.bootstrap, f"{prefix}control", [
        signed(silence, issued_at=time.time() - 600),  # expired
        replayed,
        orjson.dumps({**silence, "id": "x", "issued_at": time.time()}),  # unsigned
        signed({"command": "recommend", "slo": "checkout", "by": "ops"}),  # forbidden
        signed({**silence, "for": "9" * 400 + "w"}),  # a duration no clock can hold
        b"\xff" * 64,
    ])
    expected = ["expired", "replayed", "unsigned", "forbidden", "malformed", "malformed"]
    consume(kafka.bootstrap, audit_topic, lambda ev: len(ev) >= 1 + len(expected))

    # The first stops: the second takes partition 0 (if it had not) and judges on from its state,
    # neither judging nor auditing anything again; the same command sent once more is a replay.
    assert first.stop() == 0
    second.wait_ready()
    assert _wait_for(lambda: _silences(second) == {silence_id})
    produce(kafka.bootstrap, f"{prefix}control", [replayed])
    expected.append("replayed")
    consume(kafka.bootstrap, audit_topic, lambda ev: len(ev) >= 1 + len(expected))
    time.sleep(1)  # a worker that audited twice would have written more by now
    events = consume(kafka.bootstrap, audit_topic, lambda ev: False, timeout=2)
    assert [e["data"]["reason"] for e in events] == [None, *expected], "audited twice, or a reason is wrong"
    assert [e["data"]["offset"] for e in events] == list(range(len(events)))
    assert len({e["id"] for e in events}) == len(events)
    for event in events:
        validator("audit-event.schema.json").validate(event)
    assert second.process.poll() is None and second.get("/ready")[0] == 200
    assert _silences(second) == {silence_id}
    assert second.stop() == 0


# Injected into the worker (as its sitecustomize): bugs that two commands reach, one as it is judged,
# one as partitions apply it.
FAULTS = """
from slostream.pipeline import partition
from slostream.pipeline.alerting import Alerting

judge, command = partition.judge, Alerting.command


def judge_with_a_bug(parsed, *args):
    if "judge-poison" in repr(parsed):
        raise RuntimeError("a bug reached by this command")
    return judge(parsed, *args)


def command_with_a_bug(self, now, applied, out):
    if "apply-poison" in repr(applied):
        raise RuntimeError("a bug reached by this command")
    return command(self, now, applied, out)


partition.judge, Alerting.command = judge_with_a_bug, command_with_a_bug
"""


def test_a_command_that_makes_the_worker_raise_stops_neither_it_nor_its_successor(kafka, make_worker, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(FAULTS)
    env = {"PYTHONPATH": os.pathsep.join([str(faults), os.environ.get("PYTHONPATH", "")])}
    worker = make_worker("faulty", **env).start()
    prefix = make_worker.prefix
    silence = {"command": "silence", "for": "1h", "by": "ops"}
    produce(kafka.bootstrap, f"{prefix}control", [orjson.dumps({**silence, "matchers": {"slo": slo}})
                                                  for slo in ("judge-poison", "apply-poison", "checkout")])
    audit = consume(kafka.bootstrap, f"{prefix}audit", lambda ev: len(ev) >= 3)
    assert [e["data"]["reason"] for e in audit] == ["internal_error", None, None]
    assert "RuntimeError: a bug reached by this command" in audit[0]["data"]["message"]
    # The worker holds both partitions: each applies the second command, fails, and dead-letters it.
    letters = consume(kafka.bootstrap, f"{prefix}deadletter", lambda ev: len(ev) >= 2)
    assert sorted((e["data"]["reason"], e["data"]["topic"], e["data"]["offset"], e["data"]["message"].split(":")[0])
                  for e in letters) == [("internal_error", f"{prefix}audit", 1,
                                         f"applying the command to partition {p} failed")
                                        for p in (0, 1)]
    assert _wait_for(lambda: len(_silences(worker)) == 1), "the command after them was not applied"
    _, body = worker.get("/metrics")
    assert b'slostream_control_commands_total{outcome="refused",reason="internal_error"} 1.0' in body
    log = worker.log_path.read_text()
    assert log.count("Traceback") >= 3 and "judging the control command at offset 0 failed" in log
    assert worker.process.poll() is None and worker.stop() == 0

    # Its successor (with the same bugs) neither judges nor applies either command again.
    successor = make_worker("faulty", **env).start()
    assert _wait_for(lambda: len(_silences(successor)) == 1)
    time.sleep(2)
    assert len(consume(kafka.bootstrap, f"{prefix}audit", lambda ev: False, timeout=2)) == 3
    assert len(consume(kafka.bootstrap, f"{prefix}deadletter", lambda ev: False, timeout=2)) == 2
    assert successor.process.poll() is None and successor.stop() == 0

"""`slostream run` with no broker configured starts the embedded one and says so."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from slostream.io.broker import free_port


def test_run_without_broker_starts_the_embedded_one_and_stops_on_sigterm(tmp_path):
    port = free_port()
    log = tmp_path / "worker.log"
    with open(log, "wb") as worker_log:  # the worker keeps its own descriptor
        worker = subprocess.Popen([sys.executable, "-m", "slostream", "run", "--web-port", str(port)],
                                  stdout=worker_log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "SLOSTREAM_PARTITIONS": "1"})
    try:
        deadline = time.monotonic() + 60
        ready = False
        statuses = []
        while time.monotonic() < deadline and not ready:
            assert worker.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                    ready = response.status == 200
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
                time.sleep(0.2)
            except OSError:
                time.sleep(0.2)
        assert ready, log.read_text()
        # The web server answers during the group join and recovery, and says "not yet".
        assert statuses[0] == 503 and statuses[-1] == 200
        text = log.read_text()
        match = re.search(r"embedded broker at kafka://127\.0\.0\.1:(\d+)", text)
        assert match, text
        assert "broker is Tansu" in text
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        # The embedded broker went with the worker.
        with pytest.raises(OSError):
            import socket
            socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=1).close()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def test_demo_prints_windows_and_a_page_that_fires_and_resolves_then_exits_cleanly(demo_run):
    # `slostream demo --duration 75`, started in the background when the tests were collected
    # (tests/conftest.py): 75 s of wall time, mostly waiting, spent while the tests before this one run.
    result = demo_run.result()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if " ms" in line and "/s" in line]
    for service in ("checkout", "search", "payments"):
        assert any(f" {service} " in line for line in lines), result.stdout
    assert "embedded broker at kafka://127.0.0.1:" in result.stdout
    assert "worker exited with code 0" in result.stdout
    fired = [n for n, line in enumerate(result.stdout.splitlines())
             if "ALERT  FIRING    page     payments-availability" in line]
    resolved = [n for n, line in enumerate(result.stdout.splitlines())
                if "ALERT  RESOLVED  page     payments-availability" in line]
    assert fired and resolved and fired[0] < resolved[0], result.stdout
    assert "BREACH STARTED   policy search-p99" in result.stdout


def test_produce_and_tail_feed_and_read_a_worker_without_kcat(kafka, make_worker, tmp_path):
    make_worker().start()
    t0 = (time.time() - 600) // 60 * 60
    lines = [f'{{"service": "cli-{k % 2}", "metric": "http", "ok": {str(k % 5 != 0).lower()}, "ts": {t0 + k}}}'
             for k in range(120)]
    lines.append(f'[{{"service": "cli-0", "metric": "http", "ok": true, "ts": {t0 + 200}}},'
                 f' {{"service": "cli-1", "metric": "http", "ok": true, "ts": {t0 + 200}}}]')
    lines.append("this line is not JSON")
    source = tmp_path / "measurements.jsonl"
    source.write_text("\n".join(lines) + "\n")
    flags = ["--broker", kafka.url, "--topic-prefix", make_worker.prefix]
    sent = subprocess.run([sys.executable, "-m", "slostream", "produce", *flags, "--compression", "zstd",
                           "--per-record", "25", str(source)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert "123 measurement(s) in 7 record(s)" in sent.stderr  # 2 services x ceil(61/25) records + 1 unread line
    tailed = subprocess.run([sys.executable, "-m", "slostream", "tail", *flags, "sli", "--from-beginning",
                             "--count", "4", "--idle-exit", "60"], capture_output=True, text=True, timeout=90)
    assert tailed.returncode == 0, tailed.stderr
    events = [json.loads(line) for line in tailed.stdout.splitlines()]
    windows = sorted((e["data"]["service"], e["data"]["window_start"], e["data"]["count"], e["data"]["errors"])
                     for e in events)
    assert windows == [("cli-0", t0, 30, 6), ("cli-0", t0 + 60, 30, 6), ("cli-1", t0, 30, 6), ("cli-1", t0 + 60, 30, 6)]
    letters = subprocess.run([sys.executable, "-m", "slostream", "tail", *flags, "deadletter", "--from-beginning",
                              "--count", "1"], capture_output=True, text=True, timeout=60)
    assert json.loads(letters.stdout)["data"]["reason"] == "invalid_json"

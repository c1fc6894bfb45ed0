"""`slostream run` with no broker configured starts the embedded one and says so."""

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

pytestmark = pytest.mark.broker


def test_run_without_broker_starts_the_embedded_one_and_stops_on_sigterm(tmp_path):
    port = free_port()
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "slostream", "run", "--web-port", str(port)],
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT,
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


def test_demo_prints_windows_and_a_page_that_fires_and_resolves_then_exits_cleanly():
    result = subprocess.run([sys.executable, "-m", "slostream", "demo", "--duration", "75"],
                            capture_output=True, text=True, timeout=180)
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

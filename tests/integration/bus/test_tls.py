"""TLS for the gRPC API and for NATS, with a test CA (trustme) and real processes.

A client that trusts the CA (flag, RUNYARD_TLS_CA, `tls_ca:` in the config
file) gets through; one that does not, or speaks plaintext, does not. A
server will not serve plaintext off loopback unless told it sits behind a
TLS-terminating proxy. Over a tls:// NATS the server and an agent trusting the
CA train a run to the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runyard import natsauth
from runyard.client.sdk import Client
from runyard.v1 import common_pb2
from tests.support.services import NatsServer, free_port, postgres_database, wait_until
from tests.support.stack import Stack, cli


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    other_ca_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "other-ca.pem")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    cert.private_key_pem.write_to_path(str(pki.key_file))
    cert.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    for extra in cert.cert_chain_pems[1:]:
        with open(pki.cert_file, "ab") as f:
            f.write(extra.bytes())
    trustme.CA().cert_pem.write_to_path(str(pki.other_ca_file))
    return pki


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=60, env=env or dict(os.environ))


def _tls_healthy(endpoint: str, ca_file: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    deadline = time.monotonic() + 60
    with grpc.secure_channel(endpoint, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"no TLS health answer from {endpoint}")


@dataclass
class TlsServer:
    endpoint: str
    admin_key: str


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsServer]:
    root = tmp_path_factory.mktemp("tls-server")
    nats_server = NatsServer(root / "nats").start()
    port = free_port()
    log = root / "server.log"
    keys = root / "keys.yaml"
    argv = cli(
        "server", "--listen", f"127.0.0.1:{port}", "--database-url", f"sqlite:///{root / 'runyard.db'}",
        "--nats-url", nats_server.url, "--storage-root", (root / "objects").as_uri(), "--bootstrap-keys", str(keys),
        "--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file),
    )  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _tls_healthy(f"127.0.0.1:{port}", pki.ca_file, proc, log)
        import yaml

        yield TlsServer(f"127.0.0.1:{port}", yaml.safe_load(keys.read_text())["admin_key"])
    finally:
        proc.terminate()
        proc.wait(20)
        nats_server.stop()


def test_grpc_over_tls_works_with_the_ca_and_fails_without_it(tls_server: TlsServer, pki: Pki, tmp_path: Path) -> None:
    base = ["--endpoint", tls_server.endpoint, "--api-key", tls_server.admin_key]
    # The CA by flag, by environment, by config file.
    by_flag = _run_cli("whoami", *base, "--tls-ca", str(pki.ca_file))
    assert by_flag.returncode == 0 and "role admin" in by_flag.stdout, by_flag.stderr
    by_env = _run_cli("whoami", *base, env={**os.environ, "RUNYARD_TLS_CA": str(pki.ca_file)})
    assert by_env.returncode == 0, by_env.stderr
    config = tmp_path / "tls-config.yaml"
    config.write_text(f"tls_ca: {pki.ca_file}\n")
    by_file = _run_cli("whoami", *base, env={**os.environ, "RUNYARD_CONFIG": str(config)})
    assert by_file.returncode == 0, by_file.stderr
    # The SDK, given the CA.
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())
    with Client(tls_server.endpoint, api_key=tls_server.admin_key, credentials=credentials) as client:
        assert client.whoami().account_id == "default"
    # Plaintext, and TLS trusting another CA: no answer.
    plain = _run_cli("whoami", *base)
    assert plain.returncode != 0
    wrong_ca = _run_cli("whoami", *base, "--tls-ca", str(pki.other_ca_file))
    assert wrong_ca.returncode != 0
    missing = _run_cli("whoami", *base, "--tls-ca", str(tmp_path / "nope.pem"))
    assert missing.returncode == 1 and "nope.pem" in missing.stderr


def test_plaintext_on_a_non_loopback_address_is_refused_at_startup(tmp_path: Path) -> None:
    argv = cli(
        "server", "--listen", f"0.0.0.0:{free_port()}", "--database-url", f"sqlite:///{tmp_path / 'r.db'}",
        "--nats-url", "nats://127.0.0.1:1",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "refusing to serve plaintext" in done.stderr and "--allow-plaintext" in done.stderr
    half = subprocess.run([*argv, "--tls-cert", "x.pem"], capture_output=True, text=True, timeout=60)
    assert half.returncode == 1 and "--tls-key" in half.stderr


def test_the_server_and_an_agent_talk_to_nats_over_tls_as_their_own_users(tmp_path: Path, pki: Pki) -> None:
    """What an operator runs: a tls:// nats-server with the users `runyard admin nats-config` renders."""
    seeds = {}
    for who in ("control-plane", "agent-1"):
        seeds[who] = tmp_path / f"{who}.nk"
        natsauth.write_seed(seeds[who], natsauth.new_user_nkey()[0])
    users = natsauth.render_authorization(
        natsauth.public_key(natsauth.read_seed(seeds["control-plane"])),
        [("agent-1", natsauth.public_key(natsauth.read_seed(seeds["agent-1"])))],
    )
    tls = f'tls {{\n  cert_file: "{pki.cert_file}"\n  key_file: "{pki.key_file}"\n}}\n'
    nats_server = NatsServer(tmp_path / "nats", config=tls + users, tls=True).start()
    try:
        assert nats_server.url.startswith("tls://")

        async def untrusted() -> None:
            options = natsauth.connect_options(nats_server.url, None, str(pki.other_ca_file))
            with pytest.raises(Exception, match=r"(?i)certificate"):
                await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=3, **options)

        asyncio.run(untrusted())
        with postgres_database() as url:
            stack = Stack(
                root=tmp_path,
                database_url=url,
                nats_url=nats_server.url,
                storage_root=(tmp_path / "objects").as_uri(),
                extra_env={"RUNYARD_NATS_CA": str(pki.ca_file)},
                nats_nkey=str(seeds["control-plane"]),
                agent_nkeys={"agent-1": str(seeds["agent-1"])},
            )
            try:
                stack.start_server()
                stack.start_agent("agent-1", 1)
                manifest = (
                    'name: over-tls\nframework: {name: python}\ncommand: python -c "print(42)"\n'
                    "results: s3://results/over-tls\n"
                )
                with Client(stack.endpoint, api_key=stack.admin_key) as client:
                    run_id = client.create_experiment(manifest).runs[0].id
                    wait_until(
                        lambda: client.get_run(run_id).state == common_pb2.RUN_STATE_COMPLETED,
                        60,
                        f"the run did not complete over TLS NATS:\n{stack.logs()}",
                    )
            finally:
                stack.stop()
    finally:
        nats_server.stop()


def test_nats_tls_config_needs_a_readable_ca(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.pem"):
        natsauth.connect_options("tls://127.0.0.1:4222", None, str(tmp_path / "nope.pem"))
    # A plain URL without a CA or an NKey needs no options at all.
    assert natsauth.connect_options("nats://127.0.0.1:4222") == {}

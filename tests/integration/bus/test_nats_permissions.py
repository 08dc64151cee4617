"""The users of the bus on a real nats-server: what an agent's NKey lets it do, and what not.

The nats-server runs the `authorization` block that `runyard admin nats-config`
renders (`runyard.natsauth.render_authorization`): the control plane may do
everything, agent A only what agent A needs, and an anonymous client nothing.
Each refusal is checked from the control plane's side too (nothing reached the
stream), since NATS answers a denied publish only with an asynchronous error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from runyard import bus, natsauth
from tests.support.services import NatsServer


@dataclass
class Users:
    control_plane: Path
    a: Path
    b: Path


@pytest.fixture
def users(tmp_path: Path) -> Users:
    files = {}
    for name in ("control-plane", "agent-a", "agent-b"):
        files[name] = tmp_path / f"{name}.nk"
        natsauth.write_seed(files[name], natsauth.new_user_nkey()[0])
    return Users(files["control-plane"], files["agent-a"], files["agent-b"])


def _public(path: Path) -> str:
    return natsauth.public_key(natsauth.read_seed(path))


@pytest.fixture
def secured_nats(tmp_path: Path, users: Users) -> Iterator[NatsServer]:
    config = natsauth.render_authorization(
        _public(users.control_plane), [("agent-a", _public(users.a)), ("agent-b", _public(users.b))]
    )
    server = NatsServer(tmp_path / "nats", config=config).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connected(url: str, seed: Path | None, agent_id: str = "") -> AsyncIterator[tuple[Any, list[str]]]:
    """A connection (as that NKey user, with that agent's inbox prefix) and the errors the server sent it."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    options: dict[str, Any] = {"error_cb": on_error, "allow_reconnect": False, "connect_timeout": 3}
    if agent_id:
        options["inbox_prefix"] = natsauth.agent_inbox_prefix(agent_id)
    options.update(natsauth.connect_options(url, str(seed) if seed else None))
    nc = await nats.connect(url, **options)
    try:
        yield nc, errors
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _stream_count(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def _denied(coro: Any) -> bool:
    """Did a JetStream API call get no answer (a denied publish is dropped) or an error?"""
    try:
        await asyncio.wait_for(coro, 1.5)
    except Exception:
        return True
    return False


def test_an_anonymous_client_cannot_connect(secured_nats: NatsServer) -> None:
    async def go() -> None:
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(secured_nats.url, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)

    asyncio.run(go())


def test_an_agent_uses_only_its_own_subjects(secured_nats: NatsServer, users: Users) -> None:
    async def go() -> None:
        async with connected(secured_nats.url, users.control_plane) as (cp, _):
            cp_js = cp.jetstream()
            await bus.ensure_streams(cp_js)
            await cp_js.publish(bus.work_subject("agent-a"), b"work for a")
            await cp_js.publish(bus.work_subject("agent-b"), b"work for b: its env holds a secret")
            async with connected(secured_nats.url, users.a, "agent-a") as (nc, errors):
                js = nc.jetstream()
                # Its own work: consumer made, message pulled and acked.
                durable = bus.agent_durable("agent-a")
                config = ConsumerConfig(
                    name=durable,
                    durable_name=durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    filter_subject=bus.work_subject("agent-a"),
                )
                own = await js.pull_subscribe(
                    bus.work_subject("agent-a"), durable=durable, stream=bus.WORK_STREAM, config=config
                )
                (msg,) = await own.fetch(1, timeout=5)
                assert msg.data == b"work for a"
                await msg.ack_sync(timeout=5)
                # Its own reports and heartbeats.
                ack = await js.publish(bus.reports_subject("agent-a"), b"report of a", timeout=5)
                assert ack.stream == bus.REPORTS_STREAM
                await nc.publish(bus.heartbeat_subject("agent-a"), b"beat")

                # Another agent's work: neither through B's consumer nor through a consumer of its own.
                b_durable = bus.agent_durable("agent-b")
                assert await _denied(
                    js.pull_subscribe(bus.work_subject("agent-b"), durable=b_durable, stream=bus.WORK_STREAM)
                )
                sneaky = ConsumerConfig(name=durable, durable_name=durable, filter_subject=bus.work_subject("agent-b"))
                assert await _denied(js.add_consumer(bus.WORK_STREAM, config=sneaky))
                everything = ConsumerConfig(name=durable, durable_name=durable, filter_subject="runyard.work.*")
                assert await _denied(js.add_consumer(bus.WORK_STREAM, config=everything))
                # Core subscriptions to work, control and heartbeats of others are refused.
                seen: list[bytes] = []

                async def collect(m: Any) -> None:
                    seen.append(m.data)

                for subject in ("runyard.work.agent-b", "runyard.control.*", "runyard.heartbeat.*", "_INBOX.>"):
                    await nc.subscribe(subject, cb=collect)
                # B's reports, anyone's work or control, a heartbeat as B: never published.
                assert await _denied(js.publish(bus.reports_subject("agent-b"), b"forged report of b", timeout=2))
                assert await _denied(js.publish(bus.control_subject("agent-a"), b"forged cancel", timeout=2))
                assert await _denied(js.publish(bus.work_subject("agent-a"), b"forged work", timeout=2))
                await nc.publish(bus.heartbeat_subject("agent-b"), b"forged beat of b")
                await cp.publish(bus.heartbeat_subject("agent-b"), b"real beat of b")
                await cp.publish("runyard.control.agent-b", b"core control of b")
                await nc.flush()
                await asyncio.sleep(0.5)  # the server's -ERR answers arrive asynchronously
                assert seen == []
                assert any("permissions violation" in e.lower() for e in errors), errors

            assert await _stream_count(cp_js, bus.REPORTS_STREAM, bus.reports_subject("agent-b")) == 0
            assert await _stream_count(cp_js, bus.CONTROL_STREAM, bus.control_subject("agent-a")) == 0
            assert await _stream_count(cp_js, bus.WORK_STREAM, bus.work_subject("agent-a")) == 0
            # B's work is still there, untouched, for B.
            assert await _stream_count(cp_js, bus.WORK_STREAM, bus.work_subject("agent-b")) == 1
            async with connected(secured_nats.url, users.b, "agent-b") as (nb, _):
                sub = await nb.jetstream().pull_subscribe(
                    bus.work_subject("agent-b"),
                    durable=b_durable,
                    stream=bus.WORK_STREAM,
                    config=ConsumerConfig(name=b_durable, durable_name=b_durable, ack_policy=AckPolicy.EXPLICIT),
                )
                (msg,) = await sub.fetch(1, timeout=5)
                assert msg.data.startswith(b"work for b")

    asyncio.run(go())

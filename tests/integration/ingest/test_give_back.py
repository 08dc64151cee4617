"""Reports a stopping ingest was delivered but never took come back at once, not after their ack wait."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from runyard import bus
from runyard.server.ingest.consumer import Ingest
from tests.support.services import NatsServer

pytestmark = pytest.mark.integration


async def _deliver_without_taking(nc: Any, sub: Any) -> None:
    """What a fetch's pull request that outlived the fetch does: the report lands in the subscription's queue."""
    await nc.publish(sub._nms, json.dumps({"batch": 1, "no_wait": True}).encode(), sub._deliver)
    for _ in range(200):
        if sub.pending_msgs:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the report never reached the subscription's queue")


async def _next_replica_gets_it(js: Any, within_s: float) -> bool:
    other = await js.pull_subscribe("runyard.reports.*", durable=bus.INGEST_DURABLE, stream=bus.REPORTS_STREAM)
    try:
        msgs = await other.fetch(1, timeout=within_s)
    except (NatsTimeout, TimeoutError):
        return False
    return bool(msgs[0].data == b"a report")


@pytest.mark.parametrize("given_back", [True, False])
def test_a_report_delivered_to_a_stopping_ingest_is_redelivered_at_once(
    nats_server: NatsServer, given_back: bool
) -> None:
    async def scenario() -> bool:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            from nats.js.api import AckPolicy, ConsumerConfig

            sub = await js.pull_subscribe(
                "runyard.reports.*",
                durable=bus.INGEST_DURABLE,
                stream=bus.REPORTS_STREAM,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
            )
            await js.publish(bus.reports_subject("agent-1"), b"a report")
            await _deliver_without_taking(nc, sub)
            if given_back:
                ingest = Ingest(bus=None, js=js, credentials=None)  # type: ignore[arg-type]  # handles nothing here
                ingest._last_fetch = asyncio.get_running_loop().time() - 10  # its last fetch ended long ago
                await ingest._give_back(sub)
            # Well inside the 30 s ack wait: only a report given back can be here by then.
            return await _next_replica_gets_it(js, within_s=3.0)
        finally:
            await nc.close()

    assert asyncio.run(scenario()) is given_back

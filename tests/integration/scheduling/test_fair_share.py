"""Two accounts with quotas 4 and 2 contend for 4 GPUs: GPU time splits by weighted fair share."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.integration.scheduling.helpers import (
    Attempt,
    all_ended,
    attempts,
    create_account,
    manifest,
    peak_gpus_by_account,
    start_gpu_agents,
    stubs_at,
    submit,
    wait_until,
)
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

RUNS = 12


def gpu_seconds(held: list[Attempt], account: str, start: datetime, end: datetime) -> float:
    """GPU-seconds the account's attempts held inside [start, end], from the log's times."""
    total = 0.0
    for a in held:
        if a.account_id != account or a.ended_at is None:
            continue
        overlap = (min(a.ended_at, end) - max(a.started_at, start)).total_seconds()
        total += max(0.0, overlap) * a.gpus
    return total


def test_contended_gpus_split_by_quota_and_no_quota_is_ever_exceeded(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as admin_channel:
        admin = Stubs(admin_channel)
        keys = {"big": create_account(admin, "big", gpu_quota=4), "small": create_account(admin, "small", gpu_quota=2)}
        # Both backlogs wait before any GPU exists, so neither gets a head start.
        experiments = []
        for account, key in keys.items():
            channel, user = stubs_at(stack.endpoint, key)
            with channel:
                experiments.append(submit(user, manifest(f"{account}-backlog", "sleep 1", gpus=1, runs=RUNS)).id)
        start_gpu_agents(stack, admin, {"gpu-a": "2xH100", "gpu-b": "2xH100"})
        wait_until("both backlogs to drain", lambda: all_ended(admin, experiments), timeout=180, stack=stack)

    held = attempts(stack.database_url)
    assert len(held) == 2 * RUNS and all(a.outcome == "RunCompleted" for a in held)
    peaks = peak_gpus_by_account(held)
    assert peaks["big"] <= 4 and peaks["small"] <= 2, peaks

    # While both accounts had runs waiting: from the first assignment until either account's last one.
    # Weights 4:2 ask for 2/3 of the GPU time; with whole GPUs the fairest split of 4 is 3:1 (0.75).
    start = min(a.started_at for a in held)
    end = min(max(a.started_at for a in held if a.account_id == account) for account in keys)
    big, small = gpu_seconds(held, "big", start, end), gpu_seconds(held, "small", start, end)
    share = big / (big + small)
    assert 0.6 <= share <= 0.8, f"big got {share:.2f} of the contended GPU time ({big:.1f} vs {small:.1f} GPU-s)"

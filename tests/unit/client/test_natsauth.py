"""The NATS users Runyard renders: each agent limited to its own subjects (pure; no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runyard import natsauth


def test_an_agent_may_publish_and_subscribe_only_its_own_subjects() -> None:
    perms = natsauth.agent_permissions("gpu-1")
    publish, subscribe = perms["publish"]["allow"], perms["subscribe"]["allow"]
    assert "runyard.reports.gpu-1" in publish and "runyard.heartbeat.gpu-1" in publish
    assert all("gpu-1" in subject for subject in publish), publish
    assert not [s for s in publish if s.startswith(("runyard.work", "runyard.control"))]
    assert "$JS.API.CONSUMER.CREATE.RUNYARD_WORK.agent-gpu-1.runyard.work.gpu-1" in publish
    assert subscribe == ["_RY_INBOX.gpu-1.>"]
    with pytest.raises(ValueError):
        natsauth.agent_permissions("gpu.*")


def test_the_authorization_block_lists_the_control_plane_then_each_agent_once(tmp_path: Path) -> None:
    seeds = [natsauth.new_user_nkey() for _ in range(3)]
    (cp_seed, cp), (_, a), (_, b) = seeds
    text = natsauth.render_authorization(cp, [("gpu-2", b), ("gpu-1", a), ("gpu-1-again", a)])
    assert text.index(cp) < text.index(a) < text.index(b)
    assert text.count(a) == 1  # nats-server refuses a config naming one NKey twice
    path = tmp_path / "cp.nk"
    natsauth.write_seed(path, cp_seed)
    assert natsauth.public_key(natsauth.read_seed(path)) == cp
    assert path.stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad.nk").write_text("nothing\n")
    with pytest.raises(ValueError, match="no NATS user NKey seed"):
        natsauth.read_seed(tmp_path / "bad.nk")

"""The agent's GPU inventory: NVML names, declared inventories, what the agent registers."""

from __future__ import annotations

from pathlib import Path

import pytest

from runyard.agent.config import AgentConfig
from runyard.agent.gpus import declared_gpus, detect_gpus, gpu_model_label, short_model
from runyard.agent.main import Agent
from runyard.client import cli, daemons
from runyard.client.errors import ClientError
from runyard.v1.common_pb2 import GpuDevice


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA RTX A6000", "RTX-A6000"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA GH200 480GB", "GH200"),
    ],
)
def test_short_model_is_what_manifests_ask_for(name: str, model: str) -> None:
    assert short_model(name) == model


def test_a_declared_inventory_gets_unique_fake_uuids() -> None:
    gpus = declared_gpus("2xH100, 1xA100", "node-3")
    assert [(g.index, g.uuid, g.model) for g in gpus] == [
        (0, "GPU-node-3-0", "H100"),
        (1, "GPU-node-3-1", "H100"),
        (2, "GPU-node-3-2", "A100"),
    ]
    assert [g.model for g in declared_gpus("H100", "a")] == ["H100"]
    assert declared_gpus("none", "a") == [] and declared_gpus("0", "a") == []
    assert gpu_model_label(gpus) == "A100,H100"


@pytest.mark.parametrize("text", ["4x", "0xH100", "x H100 y", "4xH100;2xA100"])
def test_a_bad_declaration_names_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--gpus"):
        declared_gpus(text, "a")


def test_without_a_driver_no_gpu_is_reported() -> None:
    # This machine has no NVIDIA driver: NVML cannot start, and that is not an error.
    assert detect_gpus() == []


def test_the_gpus_flag_declares_the_inventory() -> None:
    args = cli.build_parser().parse_args(["agent", "--agent-id", "a7", "--gpus", "2xH100"])
    kwargs = daemons.agent_config_kwargs(cli.settings_from_args(args, environ={}), args)
    assert [g.uuid for g in kwargs["gpus"]] == ["GPU-a7-0", "GPU-a7-1"]
    assert "slots" not in kwargs

    bad = cli.build_parser().parse_args(["agent", "--agent-id", "a7", "--gpus", "lots of them"])
    with pytest.raises(ClientError, match="--gpus"):
        daemons.agent_config_kwargs(cli.settings_from_args(bad, environ={}), bad)


def test_an_agent_with_gpus_registers_them_with_a_slot_each_and_a_model_label(tmp_path: Path) -> None:
    config = AgentConfig(
        agent_id="a7",
        work_dir=str(tmp_path),
        storage_root=tmp_path.as_uri(),
        gpus=tuple(declared_gpus("2xH100", "a7")),
        labels={"pool": "train"},
    )
    registered = Agent(config)._registration()
    assert registered.slots == 2
    assert list(registered.gpu_ids) == ["GPU-a7-0", "GPU-a7-1"]
    assert list(registered.gpus) == [
        GpuDevice(index=0, uuid="GPU-a7-0", model="H100"),
        GpuDevice(index=1, uuid="GPU-a7-1", model="H100"),
    ]
    assert dict(registered.labels) == {"pool": "train", "gpu_model": "H100"}


def test_a_host_without_gpus_registers_none_and_one_slot(tmp_path: Path) -> None:
    config = AgentConfig(agent_id="cpu", work_dir=str(tmp_path), storage_root=tmp_path.as_uri(), gpus=())
    registered = Agent(config)._registration()
    assert (registered.slots, list(registered.gpu_ids), dict(registered.labels)) == (1, [], {})
    explicit = AgentConfig(agent_id="cpu", work_dir=str(tmp_path), storage_root=tmp_path.as_uri(), slots=3, gpus=())
    assert Agent(explicit)._registration().slots == 3

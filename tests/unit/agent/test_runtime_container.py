"""The container runtime's pure parts: the create request, GPUs by UUID, the shim's exit file, run files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runyard.agent.images import FrameworkImage
from runyard.agent.output_files import UnsafeOutputFile, open_run_file
from runyard.agent.runtime_container import (
    INIT_SHIM,
    ContainerError,
    ContainerExit,
    ContainerPlan,
    ContainerRuntime,
    Sandbox,
    check_gpu_support,
    container_dirs,
    container_name,
    create_options,
    gpu_options,
    parse_exit_file,
    pick_framework_image,
    read_run_file,
)
from runyard.agent.staging import RunDirs
from runyard.v1.agent_pb2 import WorkAssignment


def plan(**changes: object) -> ContainerPlan:
    values: dict[str, object] = {
        "name": "runyard-a1-r1-1",
        "image": "localhost/runyard/python:3.11",
        "command": "python train.py",
        "env": {"RESULT_DIR": "/runyard/result"},
        "labels": {"org.runyard.run": "r1"},
        "code": Path("/w/r1/1/code"),
        "data": Path("/w/r1/1/data"),
        "result": Path("/w/r1/1/result"),
        "output": Path("/w/r1/1/output"),
        "init": Path("/w/.runtime/init.sh"),
        "checkpoint": Path("/w/r1/1/checkpoint"),
    }
    values.update(changes)
    return ContainerPlan(**values)  # type: ignore[arg-type]


def test_the_sandbox_in_the_create_request() -> None:
    opts = create_options(plan(memory_bytes=256 << 20, cpus=2.0), "podman")
    assert opts["user"] == "65534:65534"
    assert opts["cap_drop"] == ["ALL"]
    assert opts["security_opt"] == ["no-new-privileges"]
    assert opts["read_only"] is True
    assert opts["tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,size=")
    assert opts["pids_limit"] == Sandbox().pids_limit
    assert opts["mem_limit"] == opts["memswap_limit"] == 256 << 20
    assert opts["nano_cpus"] == 2_000_000_000
    assert opts["network_mode"] == "none"
    assert opts["cgroupns"] == "private"
    assert opts["entrypoint"] == ["/bin/sh", "/runyard/bin/init"] and opts["command"] == ["python train.py"]
    assert opts["working_dir"] == "/runyard/code"
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in opts["mounts"]}
    assert mounts == {
        "/runyard/code": ("/w/r1/1/code", True),
        "/runyard/data": ("/w/r1/1/data", True),
        "/runyard/result": ("/w/r1/1/result", False),
        "/runyard/output": ("/w/r1/1/output", False),
        "/runyard/checkpoint": ("/w/r1/1/checkpoint", False),
        "/runyard/bin/init": ("/w/.runtime/init.sh", True),
    }
    assert "privileged" not in opts and "devices" not in opts


def test_no_limits_asked_means_none_set_and_egress_is_a_bridge_never_the_host() -> None:
    opts = create_options(plan(egress=True), "docker")
    assert "mem_limit" not in opts and "nano_cpus" not in opts
    assert opts["network_mode"] == "bridge"


def test_gpus_by_uuid_on_podman_are_cdi_device_requests() -> None:
    opts = create_options(plan(gpu_uuids=("GPU-aaa", "GPU-bbb")), "podman")
    (request,) = opts["device_requests"]
    assert request["Driver"] == "cdi"
    assert request["DeviceIDs"] == ["nvidia.com/gpu=GPU-aaa", "nvidia.com/gpu=GPU-bbb"]
    assert "devices" not in opts


def test_gpus_by_uuid_on_docker_are_nvidia_device_requests() -> None:
    (request,) = gpu_options("docker", ["GPU-aaa", "GPU-bbb"])["device_requests"]
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == ["GPU-aaa", "GPU-bbb"]
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # the ids, not "all"
    assert gpu_options("docker", []) == gpu_options("podman", []) == {}


def test_gpus_on_a_podman_too_old_for_cdi_are_refused_not_dropped() -> None:
    with pytest.raises(ContainerError, match=r"Podman 4\.3\.1 cannot attach GPUs"):
        check_gpu_support("podman", (4, 3, 1), ["GPU-aaa"])
    check_gpu_support("podman", (4, 3, 1), [])  # no GPU asked: fine
    check_gpu_support("podman", (5, 4, 2), ["GPU-aaa"])
    check_gpu_support("docker", (24, 0, 7), ["GPU-aaa"])


def test_names_and_container_side_paths() -> None:
    assert container_name("agent-1", "r-abc", 2) == "runyard-agent-1-r-abc-2"
    inside = container_dirs(RunDirs.under(Path("/w"), "r1", 1))
    assert (str(inside.code), str(inside.data), str(inside.result), str(inside.metrics_file)) == (
        "/runyard/code",
        "/runyard/data",
        "/runyard/result",
        "/runyard/output/metrics.jsonl",
    )
    assert str(inside.checkpoint) == "/runyard/checkpoint"


def test_exit_file() -> None:
    assert parse_exit_file(b"0 0\n") == (0, 0)
    assert parse_exit_file(b"137 1\n") == (137, 1)
    assert parse_exit_file(b"137 1") is None  # still being written
    assert parse_exit_file(b"") is None
    assert parse_exit_file(b"garbage\n") is None
    assert ContainerExit(143, False).returncode == -15
    assert ContainerExit(3, False).returncode == 3


def test_framework_image_choice() -> None:
    held = [FrameworkImage("pytorch", "2.12", "a", "sha256:a"), FrameworkImage("pytorch", "2.13", "b", "sha256:b")]
    assert pick_framework_image(held, "pytorch", "2.12") == held[0]
    assert pick_framework_image(held, "pytorch", "") == held[1]  # no version asked: the newest
    assert pick_framework_image(held, "pytorch", "2.9") is None
    assert pick_framework_image(held, "tensorflow", "") is None


def test_run_files_are_never_read_through_links_or_fifos(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (tmp_path / "link").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "plain").write_text("ok")
    assert read_run_file(tmp_path / "plain") == b"ok"
    with (tmp_path / "huge").open("wb") as f:  # sparse: a run filling its output folder
        f.truncate(1 << 40)
    assert read_run_file(tmp_path / "huge", limit=64) == bytes(64)
    assert read_run_file(tmp_path / "link") is None
    assert read_run_file(tmp_path / "fifo") is None  # and it did not block
    with pytest.raises(UnsafeOutputFile):
        open_run_file(tmp_path / "link")
    with pytest.raises(UnsafeOutputFile):
        open_run_file(tmp_path / "fifo")


def test_the_shim_records_output_and_status(tmp_path: Path) -> None:
    """The shim under a plain /bin/sh, its output folder its own (never signalled here: outside a container
    its `kill -TERM -1` would reach every process of the user)."""
    out = tmp_path / "output"
    out.mkdir()
    shim = tmp_path / "init"
    shim.write_text(INIT_SHIM.replace("out=/runyard/output", f"out={out}"))
    done = subprocess.run(["/bin/sh", str(shim), "echo out; echo err >&2; exit 7"], timeout=10)
    assert done.returncode == 7
    assert (out / "stdout").read_text() == "out\n" and (out / "stderr").read_text() == "err\n"
    status, _oom = (out / "exit").read_text().split()
    assert status == "7"


def test_declared_gpus_are_named_in_the_environment_but_never_attached() -> None:
    """`--gpus 4xH100` GPUs have made-up UUIDs: asking the engine for them would fail every run."""

    class FakeRuntime(ContainerRuntime):
        def __init__(self, attach: bool) -> None:
            self.agent_id, self.sandbox, self.attach_gpus = "a1", Sandbox(), attach
            self.init_path = Path("/w/.runtime/init.sh")

        def image_env(self, image: str) -> dict[str, str]:
            return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}

    work = WorkAssignment(run_id="r1", attempt=1, gpu_ids=["GPU-a1-0"])
    dirs = RunDirs.under(Path("/w"), "r1", 1)
    declared = FakeRuntime(attach=False).plan(work, dirs, "img")
    assert declared.gpu_uuids == () and declared.env["CUDA_VISIBLE_DEVICES"] == "GPU-a1-0"
    assert FakeRuntime(attach=True).plan(work, dirs, "img").gpu_uuids == ("GPU-a1-0",)

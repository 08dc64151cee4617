"""The bwrap command line (pure) and the choice of sandbox at agent start."""

from __future__ import annotations

from pathlib import Path

import pytest

from runyard.agent.sandbox import INSIDE, SandboxError, SandboxMode, bwrap_argv, keep_paths, probe
from runyard.agent.staging import RunDirs

DIRS = RunDirs.under(Path("/srv/work"), "run-1", 2)


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_the_run_gets_its_own_namespaces_and_no_network_by_default() -> None:
    argv = bwrap_argv("/usr/bin/bwrap", "python train.py", DIRS, ["/opt/venv"])
    assert argv[:2] == ["/usr/bin/bwrap", "--unshare-all"]
    assert "--share-net" not in argv
    assert "--die-with-parent" in argv and argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--uid") + 1] == "65534" and argv[argv.index("--uid") - 1] != "--uid"
    assert argv[-4:] == ["--", "/bin/sh", "-c", "python train.py"]
    assert "--share-net" in bwrap_argv("/usr/bin/bwrap", "true", DIRS, [], network=True)


def test_only_the_attempts_folders_are_bound_and_only_its_outputs_are_writable() -> None:
    argv = bwrap_argv("/usr/bin/bwrap", "true", DIRS, ["/opt/venv"])
    writable = _pairs(argv, "--bind")
    assert writable == [
        ("/srv/work/run-1/2/result", "/runyard/result"),
        ("/srv/work/run-1/2/checkpoint", "/runyard/checkpoint"),
        ("/srv/work/run-1/2/home", "/runyard/home"),
        ("/srv/work/run-1/2/tmp", "/runyard/tmp"),
        ("/srv/work/run-1/2/output/metrics.jsonl", "/runyard/output/metrics.jsonl"),
    ]
    readonly = _pairs(argv, "--ro-bind")
    assert ("/srv/work/run-1/2/code", str(INSIDE.code)) in readonly
    assert ("/srv/work/run-1/2/data", str(INSIDE.data)) in readonly
    assert ("/opt/venv", "/opt/venv") in _pairs(argv, "--ro-bind-try")
    every_source = [src for flag in ("--bind", "--ro-bind", "--ro-bind-try") for src, _ in _pairs(argv, flag)]
    # Nothing else of the work root (other runs, the agent's records), nor the root, /root or /home.
    assert not [s for s in every_source if s.startswith("/srv/work") and not s.startswith("/srv/work/run-1/2/")]
    assert not {"/", "/root", "/home", "/etc", "/srv", "/srv/work", "/tmp", "/var"} & set(every_source)
    assert tuple(argv[argv.index("--tmpfs") : argv.index("--tmpfs") + 2]) == ("--tmpfs", "/tmp")
    assert "--proc" in argv and "--dev" in argv
    # The root is read-only once everything is mounted.
    assert argv.index("--remount-ro") > max(i for i, a in enumerate(argv) if a in ("--bind", "--ro-bind"))
    assert argv[argv.index("--chdir") + 1] == "/runyard/code"


def test_gpu_devices_are_bound_when_present() -> None:
    argv = bwrap_argv("/usr/bin/bwrap", "true", DIRS, [], devices=["/dev/nvidia0", "/dev/nvidiactl"])
    assert _pairs(argv, "--dev-bind-try") == [("/dev/nvidia0", "/dev/nvidia0"), ("/dev/nvidiactl", "/dev/nvidiactl")]
    assert ("/sys", "/sys") in _pairs(argv, "--ro-bind-try")
    assert ("/sys", "/sys") not in _pairs(bwrap_argv("/usr/bin/bwrap", "true", DIRS, []), "--ro-bind-try")


def test_interpreter_folders_that_would_expose_the_agent_are_dropped() -> None:
    hidden = ["/srv/work", "/home/agent", "/srv/objects"]
    kept = keep_paths(
        [
            "/",  # a sys.path entry of / would bind everything
            "/home",  # holds the agent's HOME
            "/home/agent",  # is it
            "/srv",  # holds the work root
            "/home/agent/venv",  # inside HOME is fine: the agent's venv
            "/home/agent/venv/lib/python3.11/site-packages",  # inside a kept folder: bound with it
            "/usr/lib/python3.11",  # a system folder: bound anyway
            "relative/path",
            "/opt/torch",
        ],
        hidden,
    )
    assert kept == ("/home/agent/venv", "/opt/torch")


def test_sandbox_none_is_none() -> None:
    assert probe(SandboxMode.NONE, [], [])[0] is None


def test_without_bwrap_auto_runs_unsandboxed_and_bwrap_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without bwrap
    sandbox, why = probe(SandboxMode.AUTO, [], [])
    assert sandbox is None and "NOT sandboxed" in why and "bubblewrap" in why
    with pytest.raises(SandboxError, match=r"--sandbox bwrap: bwrap .* not on PATH"):
        probe(SandboxMode.BWRAP, [], [])


def test_a_bwrap_that_fails_is_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox, why = probe(SandboxMode.AUTO, [], [])
    assert sandbox is None and "No permissions to creating new namespace" in why
    with pytest.raises(SandboxError, match="does not work here"):
        probe(SandboxMode.BWRAP, [], [])

"""A person who forgot `runyard up` gets one actionable line, quickly, from the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def test_unreachable_endpoint_exits_non_zero_with_one_line_within_seconds() -> None:
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "runyard.client.cli", "--endpoint", f"127.0.0.1:{port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ),
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"error: cannot reach the Runyard server at 127.0.0.1:{port} "
        "(is `runyard up` running? set --endpoint or RUNYARD_ENDPOINT)\n"
    )
    assert elapsed < 8, f"took {elapsed:.1f} s"


def test_the_endpoint_from_the_environment_is_the_one_named(tmp_path: object) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "runyard.client.cli", "show", "run-x"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "RUNYARD_ENDPOINT": f"127.0.0.1:{port}"},
    )
    assert done.returncode == 1
    assert f"cannot reach the Runyard server at 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr

"""`runyard admin ...` and `runyard whoami` against a live server, as an operator types them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runyard.client.cli import main
from tests.integration.api.helpers import manifest
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def run(self, *argv: str, expect: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        assert code == expect, f"runyard {' '.join(argv)} exited {code}:\n{out}\n{err}"
        return out, err

    def json(self, *argv: str) -> Any:
        return json.loads(self.run(*argv, "-o", "json")[0])


def test_an_operator_manages_accounts_keys_quotas_and_agents(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    stack.start_server()
    stack.start_agent("agent-1", 2, "--gpus", "2xH100")
    monkeypatch.setenv("RUNYARD_ENDPOINT", stack.endpoint)
    monkeypatch.setenv("RUNYARD_API_KEY", stack.admin_key)
    cli = Cli(capsys)

    me = cli.json("whoami")
    assert (me["account_id"], me["role"]) == ("default", "admin")

    created = cli.json("admin", "accounts", "create", "acme", "--name", "Acme", "--gpu-quota", "2", "--max-queued", "5")
    assert (created["id"], created["name"], created["gpu_quota"], created["max_queued_runs"]) == ("acme", "Acme", 2, 5)
    _, err = cli.run("admin", "accounts", "create", "acme", expect=1)
    assert "ALREADY_EXISTS" in err
    # Limits not given keep their value.
    changed = cli.json("admin", "quota", "acme", "--gpu-quota", "4")
    assert (changed["gpu_quota"], changed["max_queued_runs"]) == (4, 5)
    listed = {a["id"]: a for a in cli.json("admin", "accounts", "list")}
    assert listed["acme"]["gpu_quota"] == 4 and listed["default"]["gpu_quota"] == 8
    table, _ = cli.run("admin", "accounts", "list")
    assert "acme" in table and "GPU QUOTA" in table

    user = cli.json("admin", "keys", "create", "acme", "--name", "laptop")
    assert user["secret"].startswith("ry_") and user["key"]["role"] == "user"
    agent = cli.json("admin", "keys", "create", "acme", "--role", "agent", "--agent-id", "gpu-9")
    assert (agent["key"]["role"], agent["key"]["agent_id"]) == ("agent", "gpu-9")
    # Table output prints the secret alone on stdout, once.
    out, err = cli.run("admin", "keys", "create", "acme")
    assert out.strip().startswith("ry_") and "shown this once" in err
    _, err = cli.run("admin", "keys", "create", "acme", "--agent-id", "x", expect=1)
    assert "--role agent" in err

    # The global --api-key wins over RUNYARD_API_KEY.
    acme = cli.json("--api-key", user["secret"], "whoami")
    assert (acme["account_id"], acme["role"]) == ("acme", "user")
    _, err = cli.run("--api-key", user["secret"], "admin", "accounts", "list", expect=1)
    assert "PERMISSION_DENIED" in err and "admin key" in err
    _, err = cli.run("--api-key", "ry_wrong", "list", expect=1)
    assert "UNAUTHENTICATED" in err

    keys = cli.json("admin", "keys", "list", "--account", "acme")
    assert sorted(k["role"] for k in keys) == ["agent", "user", "user"]
    assert all("secret" not in json.dumps(k) for k in keys)
    revoked = cli.json("admin", "keys", "revoke", user["key"]["id"])
    assert revoked["revoked"] is True

    agents = cli.json("admin", "agents")
    (one,) = [a for a in agents if a["id"] == "agent-1"]
    assert [g["model"] for g in one["gpus"]] == ["H100", "H100"] and not one.get("draining")
    drained = cli.json("admin", "drain", "agent-1")
    assert drained["draining"] is True
    table, _ = cli.run("admin", "agents")
    assert "draining" in table and "2x H100" in table
    assert not cli.json("admin", "drain", "agent-1", "--undrain").get("draining")
    _, err = cli.run("admin", "drain", "nobody", expect=1)
    assert "NOT_FOUND" in err

    path = tmp_path / "m.yaml"
    path.write_text(manifest("true", name="prio"))
    experiment = cli.json("submit", str(path), "--no-code")
    assert experiment["account_id"] == "default"
    assert cli.json("admin", "priority", experiment["id"], "5") == {"experiment_id": experiment["id"], "priority": 5}
    cli.run("admin", "priority", experiment["id"], "-3")
    _, err = cli.run("admin", "priority", "exp-nope", "1", expect=1)
    assert "NOT_FOUND" in err
    # The experiment's stream, priority changes included, still replays for its next decision.
    assert cli.json("cancel", experiment["id"])["id"] == experiment["id"]

    # `runyard config` never prints a key in full.
    shown = cli.json("config")
    assert shown["settings"]["api_key"]["value"] != stack.admin_key
    assert stack.admin_key not in cli.run("config")[0]

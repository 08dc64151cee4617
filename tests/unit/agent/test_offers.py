"""What a process agent registers: framework names with the versions it knows, and its runtime."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path

from runyard.agent.config import AgentConfig
from runyard.agent.main import Agent
from runyard.agent.offers import _installed, process_offers, split_framework
from runyard.v1.common_pb2 import Framework


def test_a_framework_flag_may_declare_its_version() -> None:
    assert split_framework("pytorch@2.13") == ("pytorch", "2.13")
    assert split_framework("pytorch") == ("pytorch", "")
    offers = process_offers({"pytorch@2.13": "/opt/pt/bin/python", "tensorflow": "/opt/tf/bin/python"})
    # The worker looks interpreters up by the run's framework name: the version is not part of it.
    assert offers.interpreters == {"pytorch": "/opt/pt/bin/python", "tensorflow": "/opt/tf/bin/python"}
    assert offers.frameworks() == [Framework(name="pytorch", version="2.13"), Framework(name="tensorflow")]


def test_without_flags_the_agents_own_interpreter_offers_what_is_installed_at_its_version() -> None:
    offers = process_offers({})
    assert offers.interpreters["python"] == sys.executable and offers.interpreters["pytorch"] == sys.executable
    assert offers.versions["python"] == platform.python_version()
    assert offers.versions["pytorch"] == importlib.metadata.version("torch")


def test_the_registration_says_process_and_carries_the_versions(tmp_path: Path) -> None:
    config = AgentConfig(
        agent_id="p1",
        work_dir=str(tmp_path),
        storage_root=tmp_path.as_uri(),
        gpus=(),
        frameworks={"pytorch@2.13": sys.executable, "python": sys.executable},
    )
    registered = Agent(config)._registration()
    assert registered.runtime == "process"
    assert list(registered.frameworks) == [Framework(name="python"), Framework(name="pytorch", version="2.13")]


def test_a_version_is_found_when_the_distribution_is_named_otherwise() -> None:
    # tensorflow-cpu provides `tensorflow`, as PyYAML provides `yaml` and scikit-learn `sklearn`.
    assert _installed("yaml") == importlib.metadata.version("PyYAML")
    assert _installed("sklearn") == importlib.metadata.version("scikit-learn")
    assert _installed("no_such_module_here") is None

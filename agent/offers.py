"""What a process agent offers the scheduler: framework names, their versions, and the interpreter of each.

The scheduler places a run that names `framework.version` only on an agent that
offers that version, so a process agent says what it knows and no more:
`--framework pytorch=/opt/py/bin/python` offers PyTorch with no version (it then
takes only runs that name none), `--framework pytorch@2.13=/opt/py/bin/python`
declares one. Without --framework the agent's own interpreter serves `python`
at its own version and `pytorch` / `tensorflow` at the versions installed beside
it, read from the packages' metadata (importing them takes seconds).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from runyard.v1.common_pb2 import Framework


@dataclass(frozen=True)
class ProcessOffers:
    #: Framework name -> the Python interpreter that runs its commands.
    interpreters: dict[str, str]
    #: Framework name -> its version ("" when not declared).
    versions: dict[str, str]

    def frameworks(self) -> list[Framework]:
        """The offers as AgentRegistered carries them (no digest: no image runs them)."""
        return [Framework(name=name, version=self.versions.get(name, "")) for name in sorted(self.interpreters)]


def split_framework(key: str) -> tuple[str, str]:
    """'pytorch@2.13' -> ('pytorch', '2.13'); 'pytorch' -> ('pytorch', '')."""
    name, _, version = key.partition("@")
    return name.strip(), version.strip()


def process_offers(configured: Mapping[str, str]) -> ProcessOffers:
    """The offers of `--framework NAME[@VERSION]=PYTHON` flags, or the defaults when there are none."""
    if not configured:
        return default_offers()
    interpreters: dict[str, str] = {}
    versions: dict[str, str] = {}
    for key, python in configured.items():
        name, version = split_framework(key)
        interpreters[name] = python
        versions[name] = version
    return ProcessOffers(interpreters, versions)


def default_offers() -> ProcessOffers:
    """The agent's own interpreter: python and pytorch always (as before versions were offered: a pytorch run
    without torch fails at its import, saying so), tensorflow where it is installed; each at its version here."""
    interpreters = {"python": sys.executable, "pytorch": sys.executable}
    versions = {"python": platform.python_version(), "pytorch": _installed("torch") or ""}
    tensorflow = _installed("tensorflow")
    if tensorflow is not None:
        interpreters["tensorflow"] = sys.executable
        versions["tensorflow"] = tensorflow
    return ProcessOffers(interpreters, versions)


def _installed(module: str) -> str | None:
    """The installed version of the package that provides an importable module; None when it is not importable,
    "" when no metadata says. The distribution may be named otherwise (tensorflow-cpu provides tensorflow)."""
    if importlib.util.find_spec(module) is None:
        return None
    names = [module]
    try:
        importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        names = importlib.metadata.packages_distributions().get(module, [])
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""

"""The environment a run's command sees (pure): an allowlist, nothing of the agent's own.

The agent's environment holds its API key, its NATS credentials and whatever
cloud credentials its host gave it (AWS_*, under ``runyard up`` the agent's
key); a run is user code, so it starts from an empty environment and gets
only: LANG/LC_ALL (C.UTF-8), the run's ``env`` from the manifest, then the
variables Runyard owns (DATA_DIR, RESULT_DIR, CHECKPOINT_DIR, RUNYARD_*, CUDA_VISIBLE_DEVICES,
PYTHONUNBUFFERED, HOME and TMPDIR, folders of the attempt's own), which the
manifest cannot override, so it cannot point a run at another run's folders
or GPUs. PATH is the one merged variable: the framework interpreter's folder
first, so ``python`` in the command is that interpreter whatever PATH the
manifest set, then the manifest's PATH if it set one, then the system's
standard folders.

Hyperparameters arrive as protobuf Values, where every number is a double; a
whole number is written without ``.0`` (``--hidden ${hidden}`` gets ``64``, not
``64.0``), both in RUNYARD_HP_<NAME> and in the RUNYARD_HPARAMS JSON.

A run resumes from what it finds in $CHECKPOINT_DIR; RUNYARD_RESUMED ("1"/"0")
and RUNYARD_CHECKPOINT_STEP (the staged checkpoint's step, only when resumed)
say whether the agent staged one there (runyard.agent.checkpoints restores it
before the command starts, or the attempt fails).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Value

from runyard.agent.staging import RunDirs
from runyard.v1.agent_pb2 import WorkAssignment


def plain_value(value: Value) -> Any:
    """A protobuf Value as plain JSON-able Python, whole doubles as ints."""
    return _whole_numbers(json_format.MessageToDict(value))


def _whole_numbers(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    if isinstance(v, list):
        return [_whole_numbers(x) for x in v]
    if isinstance(v, dict):
        return {k: _whole_numbers(x) for k, x in v.items()}
    return v


def hp_env_name(name: str) -> str:
    return "RUNYARD_HP_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def hp_env_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return json.dumps(value)


#: The system's standard folders, after the interpreter's (and the manifest's PATH).
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: Defaults a manifest may change.
DEFAULTS: Mapping[str, str] = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def run_path(python: str, manifest_path: str | None) -> str:
    """The interpreter's folder, the manifest's PATH, the system's folders; each folder once."""
    folders = [os.path.dirname(python), *(manifest_path or "").split(os.pathsep), *SYSTEM_PATH]
    return os.pathsep.join(dict.fromkeys(f for f in folders if f))


def build_run_env(work: WorkAssignment, dirs: RunDirs, python: str) -> dict[str, str]:
    spec = work.spec
    hparams = {name: plain_value(v) for name, v in sorted(spec.hyperparameters.items())}
    env = dict(DEFAULTS)
    env.update(spec.env)
    env.update(
        {
            "DATA_DIR": str(dirs.data),
            "RESULT_DIR": str(dirs.result),
            "CHECKPOINT_DIR": str(dirs.checkpoint),
            "RUNYARD_RESUMED": "1" if resumed(work) else "0",
            "RUNYARD_RUN_ID": work.run_id,
            "RUNYARD_ATTEMPT": str(work.attempt),
            "RUNYARD_EXPERIMENT_ID": work.experiment_id,
            "RUNYARD_METRICS_FILE": str(dirs.metrics_file),
            "RUNYARD_HPARAMS": json.dumps(hparams, sort_keys=True),
            "CUDA_VISIBLE_DEVICES": ",".join(work.gpu_ids),
            "PYTHONUNBUFFERED": "1",
            "HOME": str(dirs.home),
            "TMPDIR": str(dirs.tmp),
            "PATH": run_path(python, spec.env.get("PATH")),
        }
    )
    if resumed(work):
        env["RUNYARD_CHECKPOINT_STEP"] = str(work.resume_from.step)
    for name, value in hparams.items():
        env[hp_env_name(name)] = hp_env_value(value)
    return env


def resumed(work: WorkAssignment) -> bool:
    """The attempt starts from a checkpoint (staged into $CHECKPOINT_DIR before the command)."""
    return work.HasField("resume_from") and bool(work.resume_from.checkpoint_id)

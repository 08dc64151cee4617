"""Where every `runyard` command gets its settings from.

Each setting is looked up in this order, first hit wins:

1. a command-line flag;
2. the environment, ``RUNYARD_<KEY>`` (``RUNYARD_ENDPOINT``, ``RUNYARD_STORAGE_ROOT``, ...);
3. the config file, ``$RUNYARD_CONFIG`` or ``~/.config/runyard/config.yaml``: a YAML mapping
   with the same keys in snake_case (``endpoint: ...``, ``s3_endpoint_url: ...``, ``api_key: ...``).
   It may name several clusters under ``contexts:`` (each a mapping of the same keys), one of
   which is chosen by ``--context NAME``, ``RUNYARD_CONTEXT`` or the file's ``current_context:``,
   in that order; the chosen context's keys win over the file's top-level keys::

       current_context: lab
       contexts:
         lab: {endpoint: "runyard.lab.example:50051", api_key: ry_...}
         laptop: {endpoint: "127.0.0.1:50051"}
4. the state file that ``runyard up`` writes (``$RUNYARD_STATE_DIR/up.yaml`` or
   ``~/.local/state/runyard/up.yaml``), so that client commands find a local stack with no
   flags at all (its endpoint, storage root and admin API key);
5. the built-in default (only ``endpoint`` has one here: ``127.0.0.1:50051``; the server and
   the agent fill the other gaps from their own config dataclasses).

The state file describes one running stack, so it only counts while that stack's supervisor
is alive, and only for a client that talks to that stack: when a higher layer names another
endpoint, the state file's storage root is not mixed in with it.

A value that cannot be read (``RUNYARD_SLOTS=two``, an unknown key in the config file) is a
`ConfigError` naming where it came from, never a silent default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runyard.server.domain.units import parse_size

__all__ = [
    "DEFAULT_ENDPOINT",
    "ConfigError",
    "Settings",
    "UpState",
    "config_path",
    "load_settings",
    "parse_size",
    "pid_alive",
    "read_state",
    "remove_state",
    "state_path",
    "write_state",
]

DEFAULT_ENDPOINT = "127.0.0.1:50051"
ENV_PREFIX = "RUNYARD_"


class ConfigError(Exception):
    """A setting could not be read; the message names its source."""


@dataclass(frozen=True)
class Settings:
    """The resolved settings; None means "not set anywhere, use the consumer's default"."""

    endpoint: str = DEFAULT_ENDPOINT
    database_url: str | None = None
    nats_url: str | None = None
    storage_root: str | None = None
    s3_endpoint_url: str | None = None
    code_uri_prefix: str | None = None
    max_code_bytes: int | None = None
    agent_timeout: float | None = None
    attempt_lease: float | None = None
    listen: str | None = None
    agent_id: str | None = None
    slots: int | None = None
    work_dir: str | None = None
    frameworks: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    # An agent's declared GPU inventory ("4xH100", "none"); unset: detect through NVML.
    gpus: str | None = None
    data_dir: str | None = None
    # The bearer secret sent with every call (a client) or every report (an agent).
    api_key: str | None = field(default=None, repr=False)
    # `runyard server`: where the first account's keys go on an empty database.
    bootstrap_keys: str | None = None
    default_gpu_quota: int | None = None
    # The config file's context in use (`contexts:`), None when it names none.
    context: str | None = None
    # `runyard server`: the agent id the first account's agent key is bound to (default the host name).
    bootstrap_agent_id: str | None = None
    # `runyard server` / `runyard agent`: the NKey seed file of this process's NATS user.
    nats_nkey: str | None = None
    # CA certificate (PEM) that a tls:// NATS server's certificate is checked against.
    nats_ca: str | None = None
    # `runyard server`: certificate chain and private key (PEM) to serve gRPC over TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Clients: CA certificate (PEM) to trust for a server on TLS; set, the client speaks TLS.
    tls_ca: str | None = None
    # key -> where its value came from ("flag", "env RUNYARD_X", "config file P", "state file P", "default").
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")


# How each key's text is read: "str", "int", "size" (bytes, "100MiB" allowed), "float", "pairs" (k=v).
_KINDS = {
    "max_code_bytes": "size",
    "agent_timeout": "float",
    "attempt_lease": "float",
    "slots": "int",
    "default_gpu_quota": "int",
    "frameworks": "pairs",
    "labels": "pairs",
}
#: Keys of the config file that choose among its contexts rather than set a value.
_CONTEXT_KEYS = ("contexts", "current_context")
_KEYS: dict[str, str] = {
    f.name: _KINDS.get(f.name, "str") for f in dataclasses.fields(Settings) if f.name not in ("sources", "context")
}

# Keys the `runyard up` state file may supply: what a client needs to reach that stack.
_STATE_KEYS = ("endpoint", "storage_root", "api_key", "tls_ca")


@dataclass(frozen=True)
class UpState:
    """What `runyard up` leaves behind for other commands (and `runyard down`)."""

    endpoint: str
    storage_root: str
    data_dir: str
    pid: int
    nats_url: str = ""
    # The stack's admin key, so that every command works on it with no setup.
    api_key: str = field(default="", repr=False)
    tls_ca: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("RUNYARD_CONFIG"):
        return Path(env["RUNYARD_CONFIG"]).expanduser()
    return _home(env) / ".config" / "runyard" / "config.yaml"


def state_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("RUNYARD_STATE_DIR"):
        return Path(env["RUNYARD_STATE_DIR"]).expanduser() / "up.yaml"
    return _home(env) / ".local" / "state" / "runyard" / "up.yaml"


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    use_state: bool = True,
    context: str | None = None,
) -> Settings:
    """Resolve every setting by precedence; flags whose value is None count as not given.

    `use_state=False` is for `runyard server` and `runyard agent`: a process that *is* part of a
    stack takes its settings from flags and config, never from another stack's state file.
    `context` (the --context flag) picks one of the config file's `contexts:`.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path = config_path(env)
    chosen = context or env.get("RUNYARD_CONTEXT", "").strip() or None
    file_values, context_values, context_name = _from_config_file(path, chosen)
    layers: list[tuple[str, dict[str, Any]]] = [
        ("flag", _from_flags(flags or {})),
        *_env_layer(env),
        (f"config file {path} (context {context_name})", context_values),
        (f"config file {path}", file_values),
    ]
    for source, layer in layers:
        for key, value in layer.items():
            if key not in values:
                values[key] = value
                sources[key] = source

    if use_state:
        state = read_state(env)
        same_stack = state is not None and values.get("endpoint", state.endpoint) == state.endpoint
        if state is not None and same_stack and pid_alive(state.pid):
            for key in _STATE_KEYS:
                if key not in values and getattr(state, key):
                    values[key] = getattr(state, key)
                    sources[key] = f"state file {state_path(env)}"
    if context_name is not None:
        sources["context"] = (
            "flag" if context else "env RUNYARD_CONTEXT" if chosen else f"config file {path} (current_context)"
        )
    return Settings(**values, context=context_name, sources=sources)


def _from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(flags) - set(_KEYS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    return {k: v for k, v in flags.items() if v is not None and v != {}}


def _env_layer(env: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for key, kind in _KEYS.items():
        name = ENV_PREFIX + key.upper()
        raw = env.get(name, "").strip()
        if raw:
            out.append((f"env {name}", {key: _parse_text(raw, kind, name)}))
    return out


def _parse_text(raw: str, kind: str, where: str) -> Any:
    if kind == "size":
        try:
            return parse_size(raw)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} is not a whole number") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} is not a number") from None
    if kind == "pairs":
        return parse_pairs(raw.split(","), where)
    return raw


def parse_pairs(items: list[str], where: str) -> dict[str, str]:
    """'k=v' items into a mapping; the error names the item and where it came from."""
    out: dict[str, str] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _from_config_file(path: Path, context: str | None) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The file's top-level settings, those of the chosen context, and that context's name.

    `context` is the name asked for by flag or environment; without one the file's
    `current_context` (if any) is used. A name the file does not define is an error.
    """
    data = _read_config_file(path)
    contexts = data.pop("contexts", None)
    current = data.pop("current_context", None)
    top = _settings_of(data, path, f"config file {path}")
    if contexts is not None and not isinstance(contexts, dict):
        raise ConfigError(f"config file {path}: contexts must be a mapping of name to settings")
    contexts = contexts or {}
    name = context or (str(current) if current is not None else None)
    if name is None:
        return top, {}, None
    if name not in contexts:
        known = ", ".join(sorted(str(k) for k in contexts)) or "none"
        where = f"config file {path}" if path.exists() else f"config file {path} (missing)"
        raise ConfigError(f"{where}: no context {name!r} under contexts: (defined: {known})")
    entry = contexts[name]
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ConfigError(f"config file {path}: contexts.{name} must be a mapping of settings")
    return top, _settings_of(entry, path, f"config file {path}: contexts.{name}"), name


def _read_config_file(path: Path) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({_first_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    # `current-context` (kubectl's spelling) reads as current_context, as other keys take '-' for '_'.
    return {_context_key(k): v for k, v in data.items()}


def _context_key(key: object) -> object:
    name = str(key).replace("-", "_")
    return name if name in _CONTEXT_KEYS else key


def _settings_of(data: Mapping[Any, Any], path: Path, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _KEYS:
            known = ", ".join(sorted([*_KEYS, *_CONTEXT_KEYS]))
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        if value is None:
            continue
        out[name] = _coerce(value, _KEYS[name], f"{where}: {name}")
    return out


def _coerce(value: Any, kind: str, where: str) -> Any:
    if kind == "pairs":
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(value, list):
            return parse_pairs([str(v) for v in value], where)
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if kind in ("int", "size") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict | list | bool):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    return _parse_text(str(value), kind, where)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# -- the `runyard up` state file ------------------------------------------------------------


def read_state(environ: Mapping[str, str] | None = None) -> UpState | None:
    """The state file's content, or None when there is none or it is unreadable."""
    path = state_path(environ)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return UpState(
            endpoint=str(data["endpoint"]),
            storage_root=str(data["storage_root"]),
            data_dir=str(data["data_dir"]),
            pid=int(data["pid"]),
            nats_url=str(data.get("nats_url") or ""),
            api_key=str(data.get("api_key") or ""),
        )
    except (KeyError, TypeError, ValueError):
        return None


def write_state(state: UpState, environ: Mapping[str, str] | None = None) -> Path:
    """Write atomically, so a reader never sees half a file; owner-only, as it holds an API key."""
    path = state_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(yaml.safe_dump(state.as_dict(), sort_keys=True))
    os.replace(tmp, path)
    return path


def remove_state(pid: int | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Remove the state file; with `pid`, only if it still belongs to that supervisor."""
    if pid is not None:
        state = read_state(environ)
        if state is not None and state.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        state_path(environ).unlink()


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]

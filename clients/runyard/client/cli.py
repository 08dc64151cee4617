"""`runyard`: the command line of Runyard.

Exit status: 0 on success, 1 when something failed (one line on stderr says what),
2 for a usage or configuration error, 130 when interrupted. `watch` (and
`submit --watch`) exit 0 only when the run or every run of the experiment completed.
Settings come from flags, then RUNYARD_* variables, then the config file, then
`runyard up`'s state file (see `runyard.config`); `runyard config` shows the result.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from runyard import __version__
from runyard.client import admin as admin_commands
from runyard.client import commands, completion, daemons, manifests, stack, tb_export, usage, views
from runyard.client import images as images_commands
from runyard.client.errors import ClientError
from runyard.config import ConfigError, Settings, load_settings, parse_pairs, parse_size
from runyard.extras import MissingExtra

# Commands that are part of a stack read no state file and need no connection.
_PROCESS_COMMANDS = ("server", "agent", "up", "down")
# Commands that need no settings at all.
_LOCAL_COMMANDS = ("completion", "validate", "schema")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; 0 means every point")
    return value


def _pair(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def build_parser() -> argparse.ArgumentParser:
    # --endpoint and -o are accepted before or after the command: `runyard -o json list`
    # and `runyard list -o json` both work. SUPPRESS keeps a subcommand's absent flag from
    # overwriting the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", default=argparse.SUPPRESS, help="server address HOST:PORT (env RUNYARD_ENDPOINT)")
    common.add_argument(
        "--api-key", default=argparse.SUPPRESS, help="API key sent with every call (env RUNYARD_API_KEY)"
    )
    common.add_argument(
        "--context", default=argparse.SUPPRESS, metavar="NAME",
        help="the cluster to talk to, by its name under `contexts:` in the config file (env RUNYARD_CONTEXT)",
    )  # fmt: skip
    common.add_argument(
        "--tls-ca", default=argparse.SUPPRESS, metavar="FILE",
        help="talk TLS to the server, trusting this CA certificate (PEM; env RUNYARD_TLS_CA)",
    )  # fmt: skip
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o", "--output", choices=("table", "json", "yaml"), default=argparse.SUPPRESS,
        help="table for people (default), json or yaml for scripts",
    )  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="runyard",
        description="Runyard: submit, watch and manage experiments of training runs.",
        parents=[common, output],
    )
    parser.add_argument("--version", action="version", version=f"runyard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    client = [common, output]

    def add(
        name: str, func: Callable[..., int], help_text: str, parents: Sequence[argparse.ArgumentParser] = ()
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=list(parents))
        p.set_defaults(func=func)
        return p

    # -- the stack -----------------------------------------------------------------------
    p = add("up", stack.cmd_up, "start the all-in-one stack: NATS, the server and one local agent")
    p.add_argument("--data-dir", help=f"folder for all its data (default ./{stack.DEFAULT_DATA_DIR})")
    p.add_argument(
        "--port",
        type=int,
        default=stack.DEFAULT_PORT,
        help=f"gRPC port on 127.0.0.1 (default {stack.DEFAULT_PORT}; 0 = any free port)",
    )
    p.add_argument("--slots", type=int, default=2, help="runs the local agent holds at once (default 2)")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background; stop with `runyard down`")
    _runtime_flags(p, "the local agent's runtime")

    p = add("down", stack.cmd_down, "stop the stack that `runyard up --detach` started")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a graceful stop (default 60)")

    p = add("server", daemons.cmd_server, "run one control-plane replica (until SIGTERM/Ctrl-C)")
    p.add_argument("--listen", help="HOST:PORT to serve gRPC on (default 127.0.0.1:50051)")
    p.add_argument("--database-url", help="sqlite:///path/runyard.db or postgresql+psycopg://user@host/db")
    p.add_argument("--nats-url", help="NATS with JetStream (default nats://127.0.0.1:4222)")
    p.add_argument("--storage-root", help="file:///abs/dir to keep objects in a folder instead of S3")
    p.add_argument("--s3-endpoint-url", help="S3 API endpoint (MinIO, IBM COS, ...); default AWS")
    p.add_argument("--code-uri-prefix", help="where uploaded code goes (default s3://runyard/code)")
    p.add_argument("--max-code-bytes", type=_size, help="largest code package accepted, e.g. 100MiB")
    p.add_argument("--agent-timeout", type=float, help="seconds without a heartbeat before an agent is lost")
    p.add_argument(
        "--attempt-lease",
        type=float,
        help="seconds an agent may go without listing an attempt before it is re-queued (default 60)",
    )
    p.add_argument("--shutdown-grace", type=float, help="seconds a graceful stop waits for in-flight calls")
    p.add_argument(
        "--preemption-wait",
        type=float,
        help="seconds a run waits for GPUs before the scheduler preempts others' runs for it (default 30)",
    )
    p.add_argument(
        "--bootstrap-keys",
        metavar="FILE",
        help="on a database without accounts: create account default, an admin and an agent key, write them here",
    )
    p.add_argument("--default-gpu-quota", type=int, help="GPU quota of that first account (default 8)")
    p.add_argument(
        "--bootstrap-agent-id", help="the agent id that first agent key is bound to (default: the host name)"
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve gRPC over TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="serve without TLS on a non-loopback address (only behind a TLS-terminating proxy)",
    )
    _nats_auth_flags(p)
    p.add_argument(
        "--bootstrap-storage",
        action="append",
        metavar="URI_PREFIX",
        help="a storage prefix that first account may read and write (repeatable; default s3://default/)",
    )

    p = add("agent", daemons.cmd_agent, "run a node agent that pulls runs from NATS (until SIGTERM/Ctrl-C)")
    p.add_argument("--agent-id", help="unique id of this agent (default: the host name)")
    p.add_argument("--nats-url", help="NATS with JetStream (default nats://127.0.0.1:4222)")
    p.add_argument("--slots", type=int, help="runs held at once (default: one per GPU, 1 without GPUs)")
    p.add_argument("--work-dir", help="folder for per-run work folders")
    p.add_argument("--storage-root", help="file:///abs/dir to keep objects in a folder instead of S3")
    p.add_argument("--s3-endpoint-url", help="S3 API endpoint (MinIO, IBM COS, ...); default AWS")
    p.add_argument(
        "--framework",
        action="append",
        type=_pair,
        metavar="NAME[@VERSION]=PYTHON",
        help="offer a framework, run by that Python interpreter; @VERSION offers it to runs that name that "
        "framework.version (repeatable; default: this Python, with the versions installed here)",
    )
    p.add_argument("--label", action="append", type=_pair, metavar="KEY=VALUE", help="agent label (repeatable)")
    p.add_argument(
        "--gpus",
        metavar="INVENTORY",
        help="declare the GPUs instead of detecting them through NVML: 4xH100, 2xH100,2xA100 or none",
    )
    p.add_argument("--cancel-grace", type=float, help="seconds between SIGTERM and SIGKILL when a run is canceled")
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        help="seconds between checkpoints of a run's $CHECKPOINT_DIR while it runs, when it changed (default 30)",
    )
    p.add_argument("--max-code-extract-bytes", type=int, help="bytes one code archive may expand to (default 512 MiB)")
    p.add_argument("--max-code-files", type=int, help="files and folders one code archive may hold (default 50000)")
    p.add_argument("--api-key", help="agent API key sent with every report (env RUNYARD_API_KEY)")
    p.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "none"),
        help="where runs are processes: bwrap runs each in its own mount, PID and network namespaces with only "
        "its folders writable; auto (default) uses bwrap when it works here. Not isolated even so: the run's "
        "processes have the agent's uid outside the sandbox, no memory, CPU or pids limits, all GPUs visible",
    )
    _runtime_flags(p, "how runs are run")
    _nats_auth_flags(p)

    # -- experiments and runs ------------------------------------------------------------
    manifests.add_parsers(sub, output)

    p = add("submit", commands.cmd_submit, "submit an experiment: upload the code, create its runs", client)
    p.add_argument("manifest", metavar="MANIFEST", help="the experiment's YAML manifest")
    p.add_argument("code_dir", metavar="CODE_DIR", nargs="?", help="code to upload (default: the manifest's folder)")
    p.add_argument("--request-id", help="client request id; resubmitting with the same id never creates twice")
    p.add_argument("--no-code", action="store_true", help="upload no code (the command needs none)")
    p.add_argument("-w", "--watch", action="store_true", help="then follow it to the end, like `runyard watch`")
    p.add_argument("--no-logs", action="store_true", help="with --watch: status and metrics only")
    p.add_argument("--table", action="store_true", help="with --watch: a live table of the runs instead of lines")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the experiment id, for scripts")
    p.add_argument(
        "--from", dest="from_run", metavar="RUN",
        help="fork: every run starts from RUN's latest checkpoint (overrides the manifest's from_run)",
    )  # fmt: skip

    p = add("list", commands.cmd_list, "list experiments (or runs)", client)
    p.add_argument("what", nargs="?", choices=("experiments", "runs"), help="what to list (default experiments)")
    p.add_argument("--experiment", metavar="EXPERIMENT_ID", help="only runs of this experiment")
    p.add_argument("--state", action="append", metavar="STATE", help="only runs in this state (repeatable)")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default all)")
    p.add_argument("-w", "--watch", action="store_true", help="keep the list on screen, redrawn as it changes (Ctrl-C)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the ids, one per line")
    p.add_argument(
        "--interval", type=float, default=commands.LIST_WATCH_INTERVAL_S, metavar="SECONDS",
        help=f"with --watch: seconds between looks (default {commands.LIST_WATCH_INTERVAL_S:g})",
    )  # fmt: skip

    p = add("show", commands.cmd_show, "show an experiment with its runs, or one run", client)
    completion.complete_ids(p.add_argument("id", metavar="ID", help="exp-... or run-..."), "experiment", "run")

    p = add("watch", commands.cmd_watch, "follow a run or every run of an experiment live until it ends", client)
    completion.complete_ids(p.add_argument("id", metavar="ID", help="exp-... or run-..."), "experiment", "run")
    p.add_argument("--no-logs", action="store_true", help="status changes and metrics only")
    p.add_argument(
        "--table", action="store_true",
        help="a live table of the runs (state, step, latest metrics) instead of a line per update",
    )  # fmt: skip

    p = add("logs", commands.cmd_logs, "print a run's output, or the output of every run of an experiment", client)
    completion.complete_ids(
        p.add_argument("run", metavar="ID", help="run-... or exp-... (each line then starts with its run id)"),
        "experiment", "run",
    )  # fmt: skip
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run(s) end")
    p.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N lines (of each run)")

    p = add("metrics", commands.cmd_metrics, "a run's metrics: latest values, or every point", client)
    completion.complete_ids(p.add_argument("run", metavar="RUN", help="run-..."), "run")
    p.add_argument("--all", action="store_true", help="every point, one row per step")
    p.add_argument("--name", action="append", help="only this metric (repeatable)")
    p.add_argument("--plot", action="store_true", help="draw the curves in the terminal, one panel per metric")
    p.add_argument(
        "--max-points",
        type=_count,
        metavar="N",
        help="at most N points per metric, evenly spaced by step, always with the first, last, lowest and highest "
        f"(default {commands.METRICS_VIEW_MAX_POINTS} for the table and plot, every point with -o json; "
        "0: every point)",
    )

    p = add("compare", views.cmd_compare, "runs side by side: hyperparameters, state, best and final metrics", client)
    completion.complete_ids(
        p.add_argument("runs", metavar="RUN", nargs="+", help="run-... (two or more to compare)"), "run"
    )

    p = add("best", views.cmd_best, "download the results of an experiment's best run (by its search metric)", client)
    completion.complete_ids(p.add_argument("experiment", metavar="EXPERIMENT", help="exp-..."), "experiment")
    p.add_argument("dest", metavar="DEST", nargs="?", help="local folder (default ./RUN)")
    _storage_flags(p)

    export = sub.add_parser("export", help="write an experiment's metrics in another tool's format")
    export_sub = export.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    p = export_sub.add_parser(
        "tensorboard",
        help="every run's metrics as TensorBoard event files, one folder per run",
        description="Write every run's metrics as TensorBoard event files under DIR, one folder per run "
        "(run id + hyperparameters), so `tensorboard --logdir DIR` shows the experiment side by side.",
        parents=client,
    )
    p.set_defaults(func=tb_export.cmd_export_tensorboard)
    p.add_argument("experiment", metavar="EXPERIMENT", help="exp-...")
    p.add_argument("dir", metavar="DIR", help="folder to write into (created if missing)")

    p = add("cancel", commands.cmd_cancel, "cancel a run, or every unfinished run of an experiment", client)
    completion.complete_ids(p.add_argument("id", metavar="ID", help="exp-... or run-..."), "experiment", "run")

    p = add(
        "pause", commands.cmd_pause,
        "pause an experiment: queued runs wait, running runs stop with a last checkpoint", client,
    )  # fmt: skip
    completion.complete_ids(p.add_argument("experiment", metavar="EXPERIMENT", help="exp-..."), "experiment")
    p.add_argument("--reason", help="why, recorded in the experiment's log")

    p = add("resume", commands.cmd_resume, "resume a paused experiment: its runs go on from their checkpoints", client)
    completion.complete_ids(p.add_argument("experiment", metavar="EXPERIMENT", help="exp-..."), "experiment")
    p.add_argument("--reason", help="why, recorded in the experiment's log")

    p = add("download", commands.cmd_download, "download a run's results", client)
    completion.complete_ids(p.add_argument("run", metavar="RUN", help="run-..."), "run")
    p.add_argument("dest", metavar="DEST", nargs="?", help="local folder (default ./RUN)")
    p.add_argument(
        "--all",
        action="store_true",
        help="also the run's checkpoints/ and the files of its attempts that did not complete (attempts/)",
    )
    _storage_flags(p)

    # -- object storage -------------------------------------------------------------------
    data = sub.add_parser("data", help="put training data in object storage and look at it")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = data_sub.add_parser("upload", help="upload a file or folder", parents=client)
    p.set_defaults(func=commands.cmd_data_upload)
    p.add_argument("local", metavar="LOCAL", help="file or folder")
    p.add_argument("uri", metavar="URI", help="s3://bucket/prefix (a folder goes below it; URI/ keeps a file's name)")
    _storage_flags(p)
    p = data_sub.add_parser("ls", help="list objects under a prefix", parents=client)
    p.set_defaults(func=commands.cmd_data_ls)
    p.add_argument("uri", metavar="URI", help="s3://bucket/prefix")
    _storage_flags(p)

    usage.add_parser(sub, common)

    # -- this host's container engine ------------------------------------------------------
    images_commands.add_parser(sub, output)

    # -- operations -----------------------------------------------------------------------
    admin = sub.add_parser("admin", help="operate the control plane")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="SUBCOMMAND", required=True)
    for name, func, help_text in (
        ("rebuild", commands.cmd_admin_rebuild, "replay the event log into fresh read models"),
        ("agents", commands.cmd_admin_agents, "list the agents: their GPUs, drain state and the runs on each"),
        ("info", commands.cmd_admin_info, "what the server is and its limits"),
    ):
        admin_sub.add_parser(name, help=help_text, parents=client).set_defaults(func=func)
    admin_commands.add_parsers(admin_sub, sub, client)

    add("config", commands.cmd_config, "show the settings in effect and where each comes from", client)

    p = sub.add_parser(
        "completion",
        help="print the shell code for tab completion",
        description="Print the code that makes your shell complete runyard's commands and flags: "
        'add `eval "$(runyard completion bash)"` to ~/.bashrc (zsh: ~/.zshrc with zsh; fish: '
        "`runyard completion fish | source` in ~/.config/fish/config.fish).",
    )
    p.set_defaults(func=completion.cmd_completion)
    p.add_argument("shell", choices=completion.SHELLS, metavar="SHELL", help="bash, zsh, fish or tcsh")
    return parser


def _runtime_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--runtime",
        choices=("process", "container"),
        help=f"{what}: a local process (development), or a sandboxed container per run (default process)",
    )
    p.add_argument(
        "--engine-url",
        metavar="URL",
        help="the container engine's API (Podman or Docker), e.g. unix:///run/podman/podman.sock "
        "(default: $DOCKER_HOST, then the Podman and Docker sockets"
        + ("; `up` starts a podman service of its own)" if "local" in what else ")"),
    )


def _nats_auth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats-nkey", metavar="FILE", help="NKey seed file of this process's NATS user (env RUNYARD_NATS_NKEY)"
    )
    p.add_argument(
        "--nats-ca", metavar="FILE", help="CA certificate (PEM) of a tls:// NATS server (env RUNYARD_NATS_CA)"
    )


def _storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-root", help="file:///abs/dir when objects live in a folder (set by `runyard up`)")
    p.add_argument("--s3-endpoint-url", help="S3 API endpoint (MinIO, IBM COS, ...); default AWS")


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Flags of this command line, resolved against environment, config file and state file."""
    flags: dict[str, Any] = {}
    for key in (
        "endpoint", "database_url", "nats_url", "storage_root", "s3_endpoint_url", "code_uri_prefix",
        "max_code_bytes", "agent_timeout", "attempt_lease", "listen", "agent_id", "work_dir", "data_dir", "api_key",
        "bootstrap_keys", "default_gpu_quota", "bootstrap_agent_id", "nats_nkey", "nats_ca", "tls_cert", "tls_key",
        "tls_ca",
    ):  # fmt: skip
        flags[key] = getattr(args, key, None)
    if args.command == "agent":
        flags["slots"] = args.slots
        flags["frameworks"] = parse_pairs(args.framework or [], "--framework") or None
        flags["labels"] = parse_pairs(args.label or [], "--label") or None
        flags["gpus"] = args.gpus
    return load_settings(
        flags, environ=environ, use_state=args.command not in _PROCESS_COMMANDS, context=getattr(args, "context", None)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    completion.autocomplete(parser)
    args = parser.parse_args(argv)
    err = sys.stderr
    settings = None
    if args.command not in _LOCAL_COMMANDS:
        try:
            settings = settings_from_args(args)
        except ConfigError as e:
            print(f"error: {e}", file=err)
            return 2
    try:
        if settings is None:
            return int(args.func(args))
        if args.command in _PROCESS_COMMANDS:
            return int(args.func(args, settings))
        ctx = commands.Context(settings, output=getattr(args, "output", "table"))
        try:
            return int(args.func(args, ctx))
        finally:
            ctx.close()
    except (ClientError, MissingExtra) as e:
        print(f"error: {e}", file=err)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return stack.INTERRUPTED
    except BrokenPipeError:
        # `runyard logs RUN | head`: the reader left; not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

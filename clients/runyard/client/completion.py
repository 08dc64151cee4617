"""Tab completion of `runyard` commands and flags, through argcomplete.

argcomplete completes from the argparse parser itself, so every new command or flag
completes with no work here. The shell asks by running `runyard` with `_ARGCOMPLETE`
set; `autocomplete` answers and exits before anything else runs (it is a no-op
otherwise), so it must be called before the arguments are parsed.

argcomplete is an extra (`runyard[completion]`): it is imported only when the shell asks
for completions or `runyard completion SHELL` prints the hook, so a base install runs
every other command without it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from runyard import extras

SHELLS = ("bash", "zsh", "fish", "tcsh")


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request from the shell, if this is one (then the process exits)."""
    if "_ARGCOMPLETE" not in os.environ:  # argcomplete's own test, without importing it on every command
        return
    try:
        import argcomplete
    except ImportError:  # the hook outlived the package: offer nothing, and run no command for the shell
        raise SystemExit(0) from None
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell code that hooks runyard's completion into the user's shell."""
    extras.require("`runyard completion`", "completion")
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["runyard"], shell=args.shell))
    return 0


#: How long completing an id may wait for the server: a shell that hangs on Tab is worse than no answer.
ID_LOOKUP_TIMEOUT_S = 1.5
#: Ids offered at most per kind (the newest experiments, the runs the server lists first).
MAX_IDS = 200


def complete_ids(action: argparse.Action, *kinds: str) -> None:
    """Make this argument complete experiment and/or run ids ("experiment", "run") from the server."""

    def complete(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        try:
            return [i for i in _ids(parsed_args, kinds) if i.startswith(prefix)]
        except Exception:  # completion must never print a traceback into the shell
            return []

    action.completer = complete  # type: ignore[attr-defined]


def _ids(parsed_args: argparse.Namespace, kinds: tuple[str, ...]) -> list[str]:
    from itertools import islice

    from runyard.client.cli import settings_from_args
    from runyard.client.sdk import Client

    settings = settings_from_args(parsed_args)
    client = Client(
        settings.endpoint, api_key=settings.api_key or "", connect_timeout_s=ID_LOOKUP_TIMEOUT_S, retry_s=0.0
    )
    try:
        client.wait_ready()
        ids: list[str] = []
        if "experiment" in kinds:
            ids += [e.id for e in islice(client.list_experiments(), MAX_IDS)]
        if "run" in kinds:
            ids += [r.id for r in islice(client.list_runs(), MAX_IDS)]
        return ids
    finally:
        client.close()

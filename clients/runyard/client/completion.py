"""Tab completion of `runyard` commands and flags, through argcomplete.

argcomplete completes from the argparse parser itself, so every new command or flag
completes with no work here. The shell asks by running `runyard` with `_ARGCOMPLETE`
set; `autocomplete` answers and exits before anything else runs (it is a no-op
otherwise), so it must be called before the arguments are parsed.
"""

from __future__ import annotations

import argparse
import sys

import argcomplete
from argcomplete.shell_integration import shellcode

SHELLS = ("bash", "zsh", "fish", "tcsh")


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request from the shell, if this is one (then the process exits)."""
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell code that hooks runyard's completion into the user's shell."""
    sys.stdout.write(shellcode(["runyard"], shell=args.shell))
    return 0

"""Command templates: `${name}` placeholders filled with one run's hyperparameter values.

Values are shell-quoted, so a categorical value such as "a b; rm -rf /" reaches
the training script as one argument and never as shell syntax. `${UPPER_CASE}`
names that are not hyperparameters are environment variables (`${DATA_DIR}`,
`${RESULT_DIR}`, the manifest's env) and are left for the shell, as is any
`${...}` that is not a plain name (`${x:-1}`); `$${name}` writes a literal `${name}`.

Quoting only protects a value where the shell reads the quoted word as one
word: at the top level of the command or inside `$(...)`. Inside single or
double quotes, backticks, `$((...))`, `${...}`, after a backslash or in a
here-document the quotes Runyard adds are themselves text, and a value such as
`1'; touch /tmp/x; '` would end the user's quotes and run as shell code
(`sh -c 'echo ${x}'`). `quoting_problems` finds such placeholders so that a
manifest using one is refused at submit (see `runyard.server.domain.command_quoting`).
Inside a comment a value is written without its newlines: a newline would end
the comment and run the rest of the value.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Mapping

from runyard.server.domain.command_quoting import comment_placeholders
from runyard.server.domain.manifest_model import Scalar

_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENVIRONMENT_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def placeholders(template: str) -> list[str]:
    """Placeholder names in order of first appearance (escaped ones excluded)."""
    names: dict[str, None] = {}  # ordered, and linear however many placeholders there are
    for match in _TOKEN.finditer(template):
        name = match.group(1)
        if name is not None:
            names.setdefault(name, None)
    return list(names)


def is_environment_name(name: str) -> bool:
    return _ENVIRONMENT_NAME.fullmatch(name) is not None


def unknown_placeholders(template: str, hyperparameters: Collection[str]) -> list[str]:
    """Placeholders that name neither a hyperparameter nor an environment variable."""
    return [n for n in placeholders(template) if n not in hyperparameters and not is_environment_name(n)]


def format_value(value: Scalar) -> str:
    """How a value reads on a command line: YAML's true/false, Python's shortest float."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_command(template: str, values: Mapping[str, Scalar]) -> str:
    """Substitute every hyperparameter placeholder; raises ValueError naming an unknown one."""
    texts = {name: format_value(value) for name, value in values.items()}
    multiline = [name for name, text in texts.items() if "\n" in text]
    in_comment = comment_placeholders(template, multiline) if multiline else frozenset()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "${"
        if name in texts:
            text = texts[name]
            return shlex.quote(text.replace("\n", " ") if match.start() in in_comment else text)
        if is_environment_name(name):
            return match.group(0)
        raise ValueError(f"unknown placeholder ${{{name}}}: not a hyperparameter")

    return _TOKEN.sub(substitute, template)

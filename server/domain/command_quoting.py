"""Where in a command template a placeholder lands, as the shell will read it.

`render_command` replaces a hyperparameter placeholder with the value in
single quotes (`shlex.quote`). That is one inert word only where the shell
parses quotes: at the top level of the command, in a `( ... )` subshell or in a
`$( ... )` command substitution. Anywhere else the added quotes are just text:

- inside '...' or $'...' they end the user's quotes (`sh -c 'echo ${x}'` with
  x = `1'; touch /tmp/x; '` runs the touch in the inner shell);
- inside "..." a value holding `$(...)` or a backtick is expanded;
- inside backticks the first backtick of the value ends the substitution;
- inside `$((...))` and `${...}` the value is evaluated (bash evaluates array
  subscripts in arithmetic, `a[$(cmd)]`);
- after a backslash the first quote of the value is escaped, so the rest is bare;
- in a here-document body quotes are not parsed at all.

A value made only of characters that never need quoting (letters, digits and
`@%+=:,./-`, as `shlex.quote` decides) is written bare and reads the same in
every context: numbers, booleans and plain words may go anywhere, e.g.
`python -c "print(${n})"`. Only placeholders of hyperparameters with some value
outside that set are judged.

The scanner follows POSIX sh (plus bash's $'...') closely enough to place each
placeholder; it reads the template once, left to right (linear time). A
template it cannot follow (unbalanced quotes) only gets the placeholders seen
so far judged; the shell itself will refuse the rest.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: Without any of these (placeholders aside) every placeholder is at the top level: nothing to scan.
_OPENERS = re.compile(r"""['"`\\<]|\$[('{]""")

#: What shlex.quote leaves bare (its own test, spelled out: shlex keeps it private).
_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII)

#: Contexts in which a single-quoted word is parsed as one word.
_SAFE = ("top", "subst")

_WHERE = {
    "single": "inside single quotes",
    "ansi": "inside $'...' quotes",
    "double": "inside double quotes",
    "backtick": "inside backticks",
    "arith": "inside $((...))",
    "param": "inside ${...}",
    "escaped": "right after a backslash",
    "heredoc": "after a here-document (<<)",
}


@dataclass(frozen=True)
class QuotingProblem:
    """A hyperparameter placeholder the shell would not read as one quoted word."""

    name: str
    where: str

    def __str__(self) -> str:
        return (
            f"${{{self.name}}} is {_WHERE[self.where]} and a value of {self.name} needs shell quoting: Runyard"
            f" quotes each value itself, so write the placeholder bare (as in --arg ${{{self.name}}}); there a value"
            " could end the quotes and run as code"
        )


def needs_quoting(text: str) -> bool:
    """Whether `shlex.quote` would quote the text (it holds a character the shell might read)."""
    return _UNSAFE.search(text) is not None or not text


def quoting_problems(template: str, substituted: Collection[str]) -> list[QuotingProblem]:
    """Every placeholder of a name in `substituted` (hyperparameters with a value that needs quoting) that
    lands outside a safe context, once per name and place."""
    if not _OPENERS.search(_PLACEHOLDER.sub("", template)):
        return []
    problems: list[QuotingProblem] = []
    seen: set[tuple[str, str]] = set()

    def report(name: str, where: str) -> None:
        if (name, where) not in seen:
            seen.add((name, where))
            problems.append(QuotingProblem(name, where))

    # Each frame: [context, open parentheses inside it].
    stack: list[list[object]] = [["top", 0]]
    heredoc = False
    i, n = 0, len(template)
    while i < n:
        ctx = str(stack[-1][0])
        c = template[i]
        if c == "$" and template.startswith("$${", i):
            # Renders as a literal "${": the shell then reads a parameter expansion.
            if ctx not in ("single", "ansi", "backtick"):
                stack.append(["param", 0])
            i += 3
            continue
        if c == "$":
            match = _PLACEHOLDER.match(template, i)
            if match is not None and match.group(1) in substituted:
                if heredoc:
                    report(match.group(1), "heredoc")
                elif ctx not in _SAFE:
                    report(match.group(1), ctx)
                i = match.end()
                continue
        if ctx in ("single", "ansi"):
            if ctx == "ansi" and c == "\\":
                i += 2
                continue
            if c == "'":
                stack.pop()
            i += 1
            continue
        if c == "\\":
            match = _PLACEHOLDER.match(template, i + 1)
            if match is not None and match.group(1) in substituted:
                report(match.group(1), "escaped")
                i = match.end()
                continue
            i += 2
            continue
        if ctx == "backtick":
            if c == "`":
                stack.pop()
            i += 1
            continue
        if ctx == "double":
            if c == '"':
                stack.pop()
                i += 1
            else:
                i = _open_expansion(template, i, stack)
            continue
        # top, subst, arith, param: quotes and expansions nest.
        if c == "'":
            stack.append(["single", 0])
            i += 1
        elif c == '"':
            stack.append(["double", 0])
            i += 1
        elif c == "$" and template.startswith("$'", i):
            stack.append(["ansi", 0])
            i += 2
        elif c == "}" and ctx == "param":
            stack.pop()
            i += 1
        elif c == "(":
            stack[-1][1] = int(str(stack[-1][1])) + 1
            i += 1
        elif c == ")":
            depth = int(str(stack[-1][1]))
            if depth > 0:
                stack[-1][1] = depth - 1
            elif ctx == "subst" or (ctx == "arith" and template.startswith("))", i)):
                stack.pop()
                i += 1 if ctx == "subst" else 2
                continue
            i += 1
        elif c == "#" and ctx in _SAFE and (i == 0 or template[i - 1] in " \t\n;&|("):
            end = template.find("\n", i)
            i = n if end < 0 else end
        elif c == "<" and ctx in _SAFE and template.startswith("<<", i) and not template.startswith("<<<", i):
            heredoc = True
            i += 2
        else:
            i = _open_expansion(template, i, stack)
    return problems


def _open_expansion(template: str, i: int, stack: list[list[object]]) -> int:
    """Push the expansion that starts at `i` (`$((`, `$(`, `${`, a backtick); the index after what was read."""
    if template.startswith("$((", i):
        stack.append(["arith", 0])
        return i + 3
    if template.startswith("$(", i):
        stack.append(["subst", 0])
        return i + 2
    if template.startswith("${", i):
        stack.append(["param", 0])
        return i + 2
    if template[i] == "`":
        stack.append(["backtick", 0])
        return i + 1
    if template[i] == "\\":  # inside double quotes: skip the escaped character
        return i + 2
    return i + 1

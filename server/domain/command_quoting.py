"""Where in a command template a placeholder lands, as the shell will read it.

`render_command` replaces a hyperparameter placeholder with the value in
single quotes (`shlex.quote`). That is one inert word only where the shell
parses quotes: at the top level of the command, in a `( ... )` subshell or in a
`$( ... )` command substitution. Anywhere else the added quotes are just text:

- inside '...' or $'...' they end the user's quotes (`sh -c 'echo ${x}'` with
  x = `1'; touch /tmp/x; '` runs the touch in the inner shell);
- inside "..." a value holding `$(...)` or a backtick is expanded;
- inside backticks the first backtick of the value ends the substitution;
- inside `$((...))`, bash's `((...))`, `$[...]` and array subscripts (`a[${x}]=1`)
  and `${...}` the value is evaluated (bash runs `$(cmd)` in a subscript, even
  one in quotes: `a[$(cmd)]`);
- after a backslash the first quote of the value is escaped, so the rest is bare;
- in a here-document body quotes are not parsed at all, and a line of the
  value equal to the delimiter ends the body: the rest runs as commands.

A placeholder inside a comment is accepted: `render_command` writes its value
there without newlines (`comment_placeholders`), the only character that ends a
comment, so the value stays inside it.

A value made only of characters that never need quoting (letters, digits and
`@%+=:,./-`, as `shlex.quote` decides) is written bare and reads the same in
every context: numbers, booleans and plain words may go anywhere, e.g.
`python -c "print(${n})"`. Only placeholders of hyperparameters with some value
outside that set are judged.

The scanner follows POSIX sh (plus bash's $'...', ((...)), $[...] and
subscripts) closely enough to place each placeholder; it reads the template
once, left to right (linear time). Where dash and bash read a template
differently (`$'...'` is a quote in bash and busybox, `$` then a plain '...' in
dash; `((1 << 2))` is arithmetic in bash, two subshells and a here-document in
dash) it reads it both ways and judges every placeholder by both readings.
A `case` inside `$(...)` is not followed (its patterns' ")" would end the
substitution): every placeholder after it is judged unsafe. A comment starts, as in the shell,
only at a `#` that begins a word; after a here-document's `<<` every later
placeholder is judged as in its body (the scanner does not look for the
delimiter), comments included. A template it cannot follow (unbalanced quotes)
only gets the placeholders seen so far judged; the shell itself will refuse the
rest.

What a command does with the word it receives is the command's own business:
`eval ${x}`, `sh -c ${x}`, bash's `let ${x}` or `[[ ${x} -eq 1 ]]` run or
evaluate their argument by design.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: Without any of these (placeholders aside) every placeholder is at the top level: nothing to scan.
_OPENERS = re.compile(r"""['"`\\<#[]|\$[('{\[]|\(\(""")

#: As `render_command` reads a template: an escaped `$${`, or a placeholder.
_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: What shlex.quote leaves bare (its own test, spelled out: shlex keeps it private).
_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII)

#: Contexts in which a single-quoted word is parsed as one word.
_SAFE = ("top", "subst")

#: The reserved word `case` (a pattern's unmatched ")" follows).
_CASE = re.compile(r"case[ \t\n]")

#: Characters after which the shell starts a new word (blanks, newline, operators): a `#` there is a comment.
_WORD_BREAKS = frozenset(" \t\n;&|()<>")

_WHERE = {
    "single": "inside single quotes",
    "ansi": "inside $'...' quotes",
    "double": "inside double quotes",
    "backtick": "inside backticks",
    "arith": "inside $((...)) or ((...))",
    "param": "inside ${...}",
    "bracket": "inside bash's $[...]",
    "subscript": "inside a bash array subscript (name[...]), which bash evaluates",
    "escaped": "right after a backslash",
    "heredoc": "after a here-document (<<), where its body may be",
    "case": "after a case statement inside $(...), whose ')' this check does not follow (write it outside $(...))",
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


@dataclass
class _Frame:
    """One open context: what it is, the bare `(` open inside it, and whether a new word starts here."""

    context: str
    depth: int = 0
    word_start: bool = True


def needs_quoting(text: str) -> bool:
    """Whether `shlex.quote` would quote the text (it holds a character the shell might read)."""
    return _UNSAFE.search(text) is not None or not text


def quoting_problems(template: str, substituted: Collection[str]) -> list[QuotingProblem]:
    """Every placeholder of a name in `substituted` (hyperparameters with a value that needs quoting) that
    lands outside a safe context (the top level, `$(...)`, a comment), once per name and place."""
    problems: list[QuotingProblem] = []
    seen: set[tuple[str, str]] = set()
    for name, where, _ in _placed(template, substituted):
        if where not in _SAFE and where != "comment" and (name, where) not in seen:
            seen.add((name, where))
            problems.append(QuotingProblem(name, where))
    return problems


def comment_placeholders(template: str, names: Collection[str]) -> frozenset[int]:
    """Offsets of the placeholders of `names` that sit inside a shell comment (by any reading of the template).

    A newline in a value written there would end the comment and run the rest:
    `render_command` writes such a value without newlines.
    """
    return frozenset(at for _, where, at in _placed(template, names) if where == "comment")


def _placed(template: str, names: Collection[str]) -> Iterator[tuple[str, str, int]]:
    """(name, context, offset) for each placeholder of `names`, by each way shells read the template (those at
    the top level may be left out: no caller reports them)."""
    if not any(m.group(1) in names for m in _PLACEHOLDER.finditer(template)):
        return
    if not _OPENERS.search(_PLACEHOLDER.sub("", template)):
        return
    yield from _scan(template, names, bash=True)
    if "$'" in template or "((" in template:
        yield from _scan(template, names, bash=False)


def _scan(template: str, names: Collection[str], *, bash: bool) -> Iterator[tuple[str, str, int]]:
    """One reading: `bash` reads $'...', ((...)), $[...] and name[...] as bash does, else as dash (a `$`, two
    subshells, text)."""
    stack = [_Frame("top")]
    heredoc = False
    lost = ""  # once set, where every later placeholder is judged to be (the scanner may have lost the context)
    i, n = 0, len(template)
    while i < n:
        frame = stack[-1]
        ctx = frame.context
        c = template[i]
        if c == "$" and template.startswith("$${", i):
            # Renders as a literal "${": the shell then reads a parameter expansion.
            if ctx not in ("single", "ansi", "backtick"):
                frame.word_start = False
                stack.append(_Frame("param"))
            i += 3
            continue
        if c == "$":
            match = _PLACEHOLDER.match(template, i)
            if match is not None and match.group(1) in names:
                yield match.group(1), lost or ("heredoc" if heredoc else ctx), i
                frame.word_start = False
                i = match.end()
                continue
        if ctx in ("single", "ansi"):
            if ctx == "ansi" and c == "\\":
                match = _PLACEHOLDER.match(template, i + 1)
                if match is not None and match.group(1) in names:
                    yield match.group(1), lost or ("heredoc" if heredoc else "ansi"), i + 1
                    i = match.end()
                else:
                    i += 2
                continue
            if c == "'":
                stack.pop()
            i += 1
            continue
        if c == "\\":
            match = _PLACEHOLDER.match(template, i + 1)
            if match is not None and match.group(1) in names:
                yield match.group(1), lost or ("heredoc" if heredoc else "escaped"), i + 1
                frame.word_start = False
                i = match.end()
                continue
            if not template.startswith("\n", i + 1):  # a line continuation is removed: the word goes on as it was
                frame.word_start = False
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
                i = _open_expansion(template, i, stack, bash)
            continue
        # top, subst, arith, param: quotes and expansions nest.
        if c == "#" and ctx in _SAFE and frame.word_start and not heredoc:
            end = template.find("\n", i)
            end = n if end < 0 else end
            for match in _TOKEN.finditer(template, i, end):
                if match.group(1) is not None and match.group(1) in names:
                    yield match.group(1), lost or "comment", match.start()
            i = end
        elif c == "'":
            frame.word_start = False
            stack.append(_Frame("single"))
            i += 1
        elif c == '"':
            frame.word_start = False
            stack.append(_Frame("double"))
            i += 1
        elif c == "$" and bash and template.startswith("$'", i):
            frame.word_start = False
            stack.append(_Frame("ansi"))
            i += 2
        elif c == "}" and ctx == "param":
            stack.pop()
            i += 1
        elif c == "[" and ctx in ("bracket", "subscript"):
            frame.depth += 1
            i += 1
        elif c == "]" and ctx in ("bracket", "subscript"):
            if frame.depth > 0:
                frame.depth -= 1
            else:
                stack.pop()
            i += 1
        elif ctx == "subst" and frame.word_start and _CASE.match(template, i):
            # A pattern's ")" would close the substitution here, and a "#" after it is a comment there.
            lost = lost or "case"
            frame.word_start = False
            i += 4
        elif c == "[" and bash and ctx in _SAFE and (_names_an_array(template, i) or _keys_element(template, i, frame)):
            # name[...] at a word's start, or [key]=value in a=(...): bash evaluates the subscript of an assignment
            # (or of declare, unset, read, printf -v, [[ -v ]]) as arithmetic, and runs a $(...) in it even inside
            # quotes.
            frame.word_start = False
            stack.append(_Frame("subscript"))
            i += 1
        elif c == "(" and bash and ctx in _SAFE and template.startswith("((", i):
            # bash's arithmetic command (dash reads two subshells); a word starts after its "))".
            frame.word_start = True
            stack.append(_Frame("arith"))
            i += 2
        elif c == "(":
            frame.depth += 1
            frame.word_start = True
            i += 1
        elif c == ")":
            if frame.depth > 0:
                frame.depth -= 1
            elif ctx == "subst" or (ctx == "arith" and template.startswith("))", i)):
                stack.pop()
                i += 1 if ctx == "subst" else 2
                continue
            frame.word_start = True
            i += 1
        elif c == "<" and ctx in _SAFE and template.startswith("<<", i) and not template.startswith("<<<", i):
            heredoc = True
            frame.word_start = True
            i += 2
        else:
            frame.word_start = c in _WORD_BREAKS
            i = _open_expansion(template, i, stack, bash)


def _names_an_array(template: str, i: int) -> bool:
    """Whether the `[` at `i` follows a name that begins a word (`a[`, not `$a[`, `[[` or `x.a[`)."""
    j = i
    while j > 0 and (template[j - 1].isascii() and (template[j - 1].isalnum() or template[j - 1] == "_")):
        j -= 1
    if j == i or template[j].isdigit():
        return False
    return j == 0 or template[j - 1] in _WORD_BREAKS


def _keys_element(template: str, i: int, frame: _Frame) -> bool:
    """Whether the `[` at `i` may open `[key]=value` of a compound array assignment (not `[ test ]`, `[[`)."""
    return frame.word_start and template[i + 1 : i + 2] not in ("", " ", "\t", "\n", "[")


def _open_expansion(template: str, i: int, stack: list[_Frame], bash: bool) -> int:
    """Push the expansion that starts at `i` (`$((`, `$(`, `${`, `$[`, a backtick); the index after what was read."""
    if template.startswith("$((", i):
        stack[-1].word_start = False
        stack.append(_Frame("arith"))
        return i + 3
    if template.startswith("$(", i):
        stack[-1].word_start = False
        stack.append(_Frame("subst"))
        return i + 2
    if template.startswith("${", i):
        stack[-1].word_start = False
        stack.append(_Frame("param"))
        return i + 2
    if bash and template.startswith("$[", i):  # bash's old arithmetic expansion
        stack[-1].word_start = False
        stack.append(_Frame("bracket"))
        return i + 2
    if template[i] == "`":
        stack[-1].word_start = False
        stack.append(_Frame("backtick"))
        return i + 1
    if template[i] == "\\":  # inside double quotes: skip the escaped character
        return i + 2
    return i + 1

"""Console sessions written in markdown, read back as commands and the output they should print.

The convention (README.md, "Development", describes it for writers): an HTML comment
``<!-- docs-test: SESSION [OPTION ...] -->`` on the line right before a fenced block marks the
block as executed. In the block, a line starting with ``$ `` is a command (it continues on the
next lines while it ends with a backslash or has an unclosed quote); the lines up to the next
command are its output. Blocks naming the same SESSION run in document order, against one
fresh server. Options apply to every command of the block:

- ``wait``: the command only reads; it is repeated until its output matches (the agent reaches
  the state shown in its own time).
- ``stream``: the command does not end by itself (a watch); it is stopped once the output
  shown has arrived.
- ``background``: a stream that stays open while the next block runs; the session goes on once
  its first message has arrived, and its whole output is awaited after that next block.

A command shown without output is run and its output not compared.

Output is compared by meaning, not by bytes (see :func:`match_output`): JSON values
structurally, ``...`` standing for whatever the README leaves out (keys, items, lines, the rest
of a string), ids, times and durations as the server made them.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<session>[\w.-]+)(?P<options>(?:\s+[\w-]+)*)\s*-->\s*$")
OPTIONS = frozenset({"wait", "stream", "background"})
FENCE = re.compile(r"^```")

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T(\d{2}:\d{2}:\d{2})(\.\d+)?Z")
DURATION = re.compile(r"-?\d+(\.\d+)?s")
ELLIPSIS = "..."


class _Ellipsis:
    """Whatever the README leaves out: more keys of an object, or any number of items."""

    def __repr__(self) -> str:
        return "..."


ANY = _Ellipsis()


@dataclass(frozen=True)
class Command:
    """One ``$`` command of a marked block and the output written under it."""

    path: Path
    line: int
    text: str
    output: tuple[str, ...]
    options: frozenset[str]
    block: int
    """Line of the block's opening fence: commands of one block share it."""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def output_lines(self) -> str:
        """Where the output stands in the file, for messages."""
        if not self.output:
            return "no lines"
        first = self.line + self.text.count("\n") + 1
        return f"lines {first}-{first + len(self.output) - 1}"


@dataclass
class Session:
    """The commands of one session name in one file, in document order."""

    path: Path
    name: str
    commands: list[Command] = field(default_factory=list)


def sessions_in(path: Path) -> list[Session]:
    """Every executed session of a markdown file, in order of first appearance."""
    lines = path.read_text(encoding="utf-8").splitlines()
    sessions: dict[str, Session] = {}
    index = 0
    while index < len(lines):
        marker = MARKER.match(lines[index])
        index += 1
        if not marker:
            continue
        options = frozenset(marker["options"].split())
        if unknown := options - OPTIONS:
            raise ValueError(f"{path.name}:{index}: unknown docs-test option(s) {sorted(unknown)}")
        if index >= len(lines) or not FENCE.match(lines[index]):
            raise ValueError(f"{path.name}:{index}: a docs-test marker must stand right before a ``` block")
        start = index + 1
        end = next((i for i in range(start, len(lines)) if FENCE.match(lines[i])), None)
        if end is None:
            raise ValueError(f"{path.name}:{index + 1}: unclosed ``` block")
        session = sessions.setdefault(marker["session"], Session(path, marker["session"]))
        session.commands.extend(_commands(path, lines, start, end, options))
        index = end + 1
    return list(sessions.values())


def _commands(
    path: Path, lines: list[str], start: int, end: int, options: frozenset[str]
) -> Iterator[Command]:
    index = start
    if index < end and not lines[index].startswith("$ "):
        raise ValueError(f"{path.name}:{index + 1}: an executed block starts with a `$ ` command")
    while index < end:
        line_number = index + 1
        text = [lines[index][2:]]
        index += 1
        while _continues("\n".join(text)) and index < end:
            text.append(lines[index])
            index += 1
        output: list[str] = []
        while index < end and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        while output and not output[-1].strip():
            output.pop()
        yield Command(path, line_number, "\n".join(text), tuple(output), options, start)


def _continues(text: str) -> bool:
    """Whether a shell command goes on past this text: a trailing backslash or an open quote."""
    if text.rstrip().endswith("\\"):
        return True
    quote = ""
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quote == "'":
            quote = "" if char == "'" else quote
        elif char == "\\":
            escaped = True
        elif quote == '"':
            quote = "" if char == '"' else quote
        elif char in "'\"":
            quote = char
    return bool(quote)


# --- reading output --------------------------------------------------------------------------


def items(text: str, *, expected: bool) -> list[Any]:
    """Split output into items: JSON values (a line starting with ``{`` or ``[`` opens one) and
    other lines of text, their whitespace collapsed. In expected output, ``...`` (a line of its
    own, or inside a JSON value) stands for what is left out."""
    lines = text.splitlines()
    result: list[Any] = []
    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        stripped = line.strip()
        index += 1
        if not stripped:
            continue
        if expected and stripped == ELLIPSIS:
            result.append(ANY)
            continue
        if stripped[0] in "{[":
            rest = "\n".join([stripped, *lines[index:]])
            parsed = _json_value(rest, expected=expected)
            if parsed is not None:
                value, consumed = parsed
                result.append(value)
                index += rest[:consumed].count("\n")
                continue
        # Text is compared word by word: tabs and runs of spaces (grpcurl's error layout) alike.
        result.append(" ".join(line.split()))
    return result


def _json_value(text: str, *, expected: bool) -> tuple[Any, int] | None:
    """The JSON value at the start of ``text`` and how many characters it took, or ``None``.

    Expected output may elide with ``...``: in an object it becomes the key ``...`` (other keys
    allowed), in an array an element (other elements allowed)."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escaped = False
    index = 0
    while index < len(text):
        char = text[index]
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif expected and text.startswith(ELLIPSIS, index) and stack:
            out.append('"...": null' if stack[-1] == "{" else '"..."')
            index += len(ELLIPSIS)
            continue
        else:
            out.append(char)
            if char in "{[":
                stack.append(char)
            elif char in "}]":
                if not stack:
                    return None
                stack.pop()
                if not stack:
                    try:
                        value = json.loads("".join(out))
                    except json.JSONDecodeError:
                        return None
                    return (_with_ellipses(value) if expected else value), index + 1
        index += 1
    return None


def _with_ellipses(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: (ANY if key == ELLIPSIS else _with_ellipses(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [ANY if item == ELLIPSIS else _with_ellipses(item) for item in value]
    return value


# --- matching ---------------------------------------------------------------------------------


class Mismatch(Exception):
    """Expected and actual output differ; the message says where first."""


class Bindings:
    """Ids the README shows, each tied to the id the server made in its place.

    The first time a README id meets a real one, they are bound; from then on the README id
    must meet that same real one (an escalation listed is the one the job waits on), and the
    commands that follow use the real one in its place.
    """

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def apply(self, text: str) -> str:
        """``text`` with every bound README id replaced by its real one."""
        return UUID.sub(lambda m: self.ids.get(m.group(0), m.group(0)), text)

    def bind(self, shown: str, real: str, where: str) -> None:
        bound = self.ids.get(shown)
        if bound is None:
            if real in self.ids.values() and real != shown:
                raise Mismatch(f"{where}: {real} is already shown as another id than {shown}")
            self.ids[shown] = real
        elif bound != real:
            raise Mismatch(f"{where}: expected the id shown as {shown} ({bound}), got {real}")


def match_output(expected: list[Any], actual: list[Any], bindings: Bindings) -> None:
    """Raise :class:`Mismatch` unless ``actual`` items match ``expected``; on success the new
    id bindings are kept, on failure none are."""
    trial = copy.deepcopy(bindings)
    _match_sequence(expected, actual, trial, "output")
    bindings.ids = trial.ids


def _match(expected: Any, actual: Any, bindings: Bindings, where: str) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            raise Mismatch(f"{where}: expected an object, got {_short(actual)}")
        open_ended = ELLIPSIS in expected
        for key, value in expected.items():
            if key == ELLIPSIS:
                continue
            if key not in actual:
                raise Mismatch(f"{where}: missing {key!r} (got keys {sorted(actual)})")
            _match(value, actual[key], bindings, f"{where}.{key}")
        extra = sorted(set(actual) - set(expected))
        if extra and not open_ended:
            names = ", ".join(repr(key) for key in extra)
            raise Mismatch(f"{where}: unexpected {names} (write ... to allow more)")
    elif isinstance(expected, list):
        if not isinstance(actual, list):
            raise Mismatch(f"{where}: expected an array, got {_short(actual)}")
        _match_sequence(expected, actual, bindings, where)
    elif isinstance(expected, str) and isinstance(actual, str):
        _match_string(expected, actual, bindings, where)
    elif type(expected) is not type(actual) or expected != actual:
        raise Mismatch(f"{where}: expected {_short(expected)}, got {_short(actual)}")


def _match_sequence(expected: list[Any], actual: list[Any], bindings: Bindings, where: str) -> None:
    """Without ``...`` item for item; with it, the shown items in order, others anywhere."""
    if not any(item is ANY for item in expected):
        if len(expected) != len(actual):
            raise Mismatch(
                f"{where}: expected {len(expected)} items, got {len(actual)}: {_short(actual, 300)}"
            )
        for index, (shown, real) in enumerate(zip(expected, actual, strict=True)):
            _match(shown, real, bindings, f"{where}[{index}]")
        return
    position = 0
    for shown in (item for item in expected if item is not ANY):
        last_error: Mismatch | None = None
        while position < len(actual):
            trial = copy.deepcopy(bindings)
            try:
                _match(shown, actual[position], trial, f"{where}[{position}]")
            except Mismatch as error:
                last_error = error
                position += 1
                continue
            bindings.ids = trial.ids
            position += 1
            break
        else:
            detail = f" (last try: {last_error})" if last_error else ""
            raise Mismatch(f"{where}: nothing matches {_short(shown)}{detail}")


def _match_string(expected: str, actual: str, bindings: Bindings, where: str) -> None:
    if UUID.fullmatch(expected):
        if not UUID.fullmatch(actual):
            raise Mismatch(f"{where}: expected an id, got {actual!r}")
        bindings.bind(expected, actual, where)
        return
    if shown_time := TIMESTAMP.fullmatch(expected):
        real_time = TIMESTAMP.fullmatch(actual)
        if not real_time:
            raise Mismatch(f"{where}: expected a time, got {actual!r}")
        if shown_time[1] == "00:00:00" and not shown_time[2] and real_time[1] != "00:00:00":
            raise Mismatch(f"{where}: expected a midnight, got {actual!r}")
        return
    if DURATION.fullmatch(expected):
        if not DURATION.fullmatch(actual):
            raise Mismatch(f"{where}: expected a duration, got {actual!r}")
        return
    if TIMESTAMP.search(expected) or UUID.search(expected):
        _match_text_line(expected, actual, bindings, where)
        return
    if expected.endswith(ELLIPSIS) and len(expected) > len(ELLIPSIS):
        if not actual.startswith(expected[: -len(ELLIPSIS)]):
            raise Mismatch(f"{where}: expected {expected!r}, got {actual!r}")
        return
    if expected != actual:
        raise Mismatch(f"{where}: expected {expected!r}, got {actual!r}")


def _match_text_line(expected: str, actual: str, bindings: Bindings, where: str) -> None:
    """Text that holds ids and times: equal once they are set aside, the ids then bound."""

    def shape(text: str) -> str:
        return TIMESTAMP.sub("<time>", UUID.sub("<id>", text)).rstrip()

    if shape(expected) != shape(actual):
        raise Mismatch(f"{where}: expected {expected!r}, got {actual!r}")
    for shown, real in zip(UUID.findall(expected), UUID.findall(actual), strict=True):
        bindings.bind(shown, real, where)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report(command: Command, actual_text: str, problem: str) -> str:
    """A failure message naming the README line, with a diff of shown and real output."""
    diff = difflib.unified_diff(
        list(command.output),
        actual_text.splitlines(),
        fromfile=f"{command.path.name} ({command.output_lines}, as shown)",
        tofile="actual output",
        lineterm="",
    )
    return (
        f"{command.where}: the output of\n  $ {command.text}\n"
        f"no longer matches what {command.path.name} shows ({command.output_lines}):\n"
        f"  {problem}\n" + "\n".join(diff)
    )

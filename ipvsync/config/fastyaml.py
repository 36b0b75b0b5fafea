"""A line-based reader for the plain block-YAML that service entries are written in.

libyaml plus the node-by-node conversion costs ~25 us per real server; a cold load of 1000 x 10
spends a third of its time there (issue 2). Service entries are nearly always the same few shapes:
block mappings and sequences, plain or simply quoted scalars, one-line flow collections. This reader
accepts exactly those and gives the values, marks and node count that `load._convert` gives for the
same text; on anything else (multi-line scalars, anchors, tags, escapes, odd indentation, duplicate
keys, YAML 1.1 traps, unusual characters) it answers None and the caller uses libyaml. The unit
tests compare it with libyaml on generated and mutated text.
"""

from __future__ import annotations

import re
from typing import Any

from ipvsync.config.load import Path, resolve_plain

Marks = dict[Path, tuple[int, int]]

# characters libyaml treats specially anywhere (breaks other than \n, BOM, non-printables): not ours
_ODD = re.compile("[^\n\x20-\x7e\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]|[\u2028\u2029]")
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]*):(?: +|$)")
# a plain scalar in block context: no indicator first, no ': ' or ' #' inside, no brackets or quotes
_WORD = r"(?:[^\s:#\[\]{}'\"]|:(?=[^\s,\[\]{}])|(?<=[^\s])#)+"
_PLAIN = re.compile(rf"(?:[^\s\-?:,\[\]{{}}#&*!|>'\"%@`]|[-?](?=[^\s\[\]{{}}'\"]))(?:{_WORD})?(?: +{_WORD})*")
# in flow context also no ':' or '?' inside (libyaml versions disagree on 'a:b' there)
_FLOW_PLAIN = re.compile(r"(?:[^\s\-?:,\[\]{}#&*!|>'\"%@`]|-(?=[^\s:?,\[\]{}#'\"]))[^\s:?,\[\]{}#'\"]*")
_QUOTED = re.compile(r"'[^'\n]*'(?!')|\"[^\"\\\n]*\"")
_FLOW_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]*): +")
# one plain word ending the line (a subset of _PLAIN): letters, digits, '_./-', inner ':'
_WORD_TO_END = re.compile(r"[0-9A-Za-z_./][0-9A-Za-z_./-]*(?::[0-9A-Za-z_./-]+)*")
_REST = re.compile(r" *(?:#.*)?$")  # what may follow a value on its line: spaces, a comment
_SPACES = re.compile(r" *")


class _Unsure(Exception):
    """The text is not in the subset: the caller parses it with libyaml."""


class _NoMarks(dict):  # type: ignore[type-arg]
    """A marks mapping that keeps nothing (a first read that leaves the marks for later)."""

    def __setitem__(self, key: Path, value: tuple[int, int]) -> None:
        pass

    def setdefault(self, key: Path, default: tuple[int, int] | None = None) -> tuple[int, int] | None:  # type: ignore[override]
        return default


class _Reader:
    def __init__(self, text: str, line0: int, keep_marks: bool = True) -> None:
        # content lines: (1-based line, indentation, text without the indentation)
        self.lines: list[tuple[int, int, str]] = []
        for n, raw in enumerate(text.split("\n"), line0 + 1):
            body = raw.lstrip(" ")
            if body and body[0] != "#":
                self.lines.append((n, len(raw) - len(body), body))
        self.i = 0
        self.line0 = line0
        self.marks: Marks = {} if keep_marks else _NoMarks()
        self.nodes = 0
        self.rs_lines: list[int] = []  # the line of each real_servers item, relative to the name's line

    # -- inline values (the rest of a line) ----------------------------------------------------------

    def scalar(self, text: str, pos: int, flow: bool) -> tuple[Any, int]:
        if text[pos:pos + 1] in ("'", '"'):
            m = _QUOTED.match(text, pos)
            if m is None:
                raise _Unsure
            return m.group()[1:-1], m.end()
        m = (_FLOW_PLAIN if flow else _PLAIN).match(text, pos)
        if m is None:
            raise _Unsure
        value, problem = resolve_plain(m.group())
        if problem:
            raise _Unsure
        return value, m.end()

    def inline(self, text: str, pos: int, line: int, col0: int, path: Path, flow: bool) -> tuple[Any, int]:
        """The value starting at text[pos] (a flow collection or a scalar) and where it ends."""
        self.nodes += 1
        self.marks.setdefault(path, (line, col0 + pos + 1))
        c = text[pos:pos + 1]
        if c == "[":
            out: list[Any] = []
            pos, done = _flow_next(text, pos + 1, "]", first=True)
            while not done:
                value, pos = self.inline(text, pos, line, col0, path + (len(out),), True)
                out.append(value)
                pos, done = _flow_next(text, pos, "]")
            return out, pos
        if c == "{":
            mapping: dict[str, Any] = {}
            pos, done = _flow_next(text, pos + 1, "}", first=True)
            while not done:
                m = _FLOW_KEY.match(text, pos)
                if m is None or m.group(1) in mapping:
                    raise _Unsure
                key = m.group(1)
                self.marks[path + (key,)] = (line, col0 + pos + 1)
                mapping[key], pos = self.inline(text, m.end(), line, col0, path + (key,), True)
                pos, done = _flow_next(text, pos, "}")
            return mapping, pos
        return self.scalar(text, pos, flow)

    def word(self, text: str, pos: int, line: int, col0: int, path: Path) -> Any:
        """The value of text[pos:], one plain word (a _WORD_TO_END match)."""
        value, problem = resolve_plain(text[pos:])
        if problem:
            raise _Unsure
        self.nodes += 1
        self.marks.setdefault(path, (line, col0 + pos + 1))
        return value

    def line_value(self, text: str, pos: int, line: int, col0: int, path: Path) -> Any:
        if _WORD_TO_END.fullmatch(text, pos):  # the usual case: one plain word, nothing after it
            return self.word(text, pos, line, col0, path)
        value, end = self.inline(text, pos, line, col0, path, False)
        if not _REST.match(text, end):
            raise _Unsure
        return value

    # -- block structure -------------------------------------------------------------------------

    def nested(self, parent_indent: int, path: Path) -> Any:
        """The block value of a `key:` with nothing after it: a mapping or a sequence, deeper."""
        if self.i >= len(self.lines) or self.lines[self.i][1] <= parent_indent:
            raise _Unsure  # an empty value or an indentless sequence
        _n, indent, body = self.lines[self.i]
        if body == "-" or body.startswith("- "):
            return self.sequence(indent, path)
        return self.mapping(indent, path, body, 0)

    def mapping(self, indent: int, path: Path, body: str, offset: int) -> dict[str, Any]:
        """A block mapping whose first key is the current line's `body` at column indent + offset."""
        self.nodes += 1
        line = self.lines[self.i][0]
        self.marks.setdefault(path, (line, indent + offset + 1))
        out: dict[str, Any] = {}
        col = indent + offset
        while True:
            m = _KEY.match(body)
            if m is None or m.group(1) in out:
                raise _Unsure
            key = m.group(1)
            kpath = path + (key,)
            self.marks[kpath] = (line, col + 1)
            self.i += 1
            if m.end() == len(body):
                out[key] = self.nested(col, kpath)
            else:
                out[key] = self.line_value(body, m.end(), line, col, kpath)
            if self.i >= len(self.lines):
                return out
            line, ind, body = self.lines[self.i]
            if ind < col:
                return out
            if ind != col:
                raise _Unsure  # a continuation line or a stray deeper line
            # same column: the next key (for a mapping inside a sequence item, ind is the item's column)

    def sequence(self, indent: int, path: Path) -> list[Any]:
        self.nodes += 1
        line = self.lines[self.i][0]
        self.marks.setdefault(path, (line, indent + 1))
        out: list[Any] = []
        lines = self.lines
        record = self.rs_lines if len(path) == 3 and path[2] == "real_servers" else None
        base = self.line0 + 1
        while True:
            _n, ind, body = lines[self.i]
            if record is not None:
                record.append(line - base)
            if not body.startswith("- "):
                raise _Unsure  # "-" alone: an empty or nested item
            ipath = path + (len(out),)
            if _WORD_TO_END.fullmatch(body, 2):  # the usual item: "- 198.51.100.1:8080"
                out.append(self.word(body, 2, line, indent, ipath))
                self.i += 1
            else:
                pos = _SPACES.match(body, 2).end()
                rest = body[pos:]
                if (": " in rest or rest.endswith(":")) and _KEY.match(rest):
                    # a mapping in the item: its keys sit at the column of the first one
                    lines[self.i] = (line, indent + pos, rest)
                    out.append(self.mapping(indent + pos, ipath, rest, 0))
                else:
                    out.append(self.line_value(body, pos, line, indent, ipath))
                    self.i += 1
            if self.i >= len(lines):
                return out
            line, ind, body = lines[self.i]
            if ind < indent or (ind == indent and not body.startswith("-")):
                return out
            if ind != indent:
                raise _Unsure


def _flow_next(text: str, pos: int, close: str, first: bool = False) -> tuple[int, bool]:
    """Past the spaces (and, between items, the ", ") at text[pos] in a flow collection: (where the
    next item starts, False), or (just past `close`, True) at its end."""
    pos = _SPACES.match(text, pos).end()
    if text.startswith(close, pos):
        return pos + 1, True
    if first:
        return pos, False
    if not text.startswith(", ", pos):
        raise _Unsure
    return _SPACES.match(text, pos + 1).end(), False


def read_service(text: str, line0: int, marks: bool = True) -> tuple[str, Any, Marks | None, int, list[int]] | None:
    """One `name: {...}` service entry (its text, first line at 0-based `line0`) read without libyaml:
    (name, value, marks under ("services",), nodes, lines) exactly as the libyaml path gives them,
    or None. `lines`: the name's line and then each real_servers item's line, all minus `line0` + 1.
    marks=False: no marks (None), to be read again from the text when asked for."""
    if _ODD.search(text):
        return None
    reader = _Reader(text, line0, marks)
    if not reader.lines:
        return None
    line, indent, body = reader.lines[0]
    try:
        value = reader.mapping(indent, ("services",), body, 0)
    except (_Unsure, IndexError, RecursionError):
        return None
    if reader.i != len(reader.lines) or len(value) != 1:
        return None
    (name, inner), = value.items()
    reader.rs_lines.insert(0, line - (line0 + 1))  # the name's own line first
    if not marks:
        return name, inner, None, reader.nodes, reader.rs_lines
    reader.marks.pop(("services",), None)
    return name, inner, reader.marks, reader.nodes, reader.rs_lines

"""Incremental re-parse of a config whose `services:` block changed in a few places.

A 1000-service file edited in one line should cost one service's parse, not 14,000 lines of YAML
(issue 4: edit -> kernel latency). The block-style `services:` mapping is cut into one text chunk
per service (a line at the block's indentation starts a chunk); a chunk whose text is unchanged
reuses its earlier parse (values and marks, shifted when lines moved), a changed chunk is parsed
alone, the rest of the file is parsed with the block blanked out (line numbers kept).

The fast path is only an optimisation: whenever the text does not have that simple shape
(flow-style services, tabs, anchors or aliases reaching across chunks, directives, any error or
warning at all) it returns None and the caller parses the whole file, so errors and values are
always those of a full parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from ipvsync.config.fastyaml import read_service
from ipvsync.config.load import MAX_NODES, ConfigError, Document, Path, _convert

# patterns start with a literal newline (not ^ with re.M) so that re can skip ahead with memchr
_SERVICES_LINE = re.compile(r"\nservices:[ \t]*(?:#[^\n]*)?(?=\n)")
_TOP_LEVEL = re.compile(r"\n[^ \n#]")  # a non-comment line at column 0 ends the block
_FIRST = re.compile(r"\n( *)[^ \n#]")  # the block's first content line gives its indentation
_LOADER = getattr(yaml, "CBaseLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Chunk:
    """One service's parse: its name, value and marks (absolute lines for chunk start `line0`).

    A chunk read by config.fastyaml keeps no marks (None) until they are asked for (an error, a
    test): it keeps its text, and the lines of its name and real servers for the model's origins.
    3 MB of marks for 1000 x 10 were most of a cold load's new pages."""

    line0: int  # 0-based line of the chunk's first line
    name: str
    value: Any
    marks: dict[Path, tuple[int, int]] | None
    nodes: int = 0  # YAML values inside (the alias-bomb budget)
    text: str = ""  # with marks None: the text they are read from
    rs_lines: tuple[int, ...] = ()  # with marks None: the name's, then each real server's line - (line0 + 1)

    def at(self, line0: int) -> Chunk:
        """The same parse for the chunk now starting at `line0` (lines above it were added/removed)."""
        if line0 == self.line0:
            return self
        if self.marks is None:
            return Chunk(line0, self.name, self.value, None, self.nodes, self.text, self.rs_lines)
        d = line0 - self.line0
        return Chunk(line0, self.name, self.value, {p: (ln + d, c) for p, (ln, c) in self.marks.items()}, self.nodes)

    def read_marks(self) -> dict[Path, tuple[int, int]]:
        """The marks (read again from the text when they were not kept)."""
        if self.marks is not None:
            return self.marks
        got = read_service(self.text, self.line0)
        assert got is not None, "a text the fast reader read once reads again"
        return got[2] or {}


def _bounds(text: str) -> tuple[int, int, int, list[int]] | None:
    """(block start, block end, indentation, chunk start offsets) of the services block, or None."""
    if text.startswith("%") or "\n%" in text or "\t" in text or "\r" in text:
        return None  # directives, tabs, CR line ends: leave them to the full parser
    text = "\n" + text  # offsets below are shifted by one: every line now follows a newline
    found = _SERVICES_LINE.search(text)
    if found is None or _SERVICES_LINE.search(text, found.end()) is not None:
        return None
    start = found.end()  # the newline ending the services line
    top = _TOP_LEVEL.search(text, start)
    end = top.start() if top else len(text) - 1
    first = _FIRST.search(text, start, end + 1)
    if first is None or not first.group(1):
        return None
    indent = len(first.group(1))
    # any content line indented less than the services' own keys: not our shape
    if indent > 1 and re.compile(rf"\n {{1,{indent - 1}}}[^ \n#]").search(text, start, end + 1):
        return None
    starts = [m.start() for m in re.compile(rf"\n {{{indent}}}[^ \n#]").finditer(text, start, end + 1)]
    if not starts or starts[0] != first.start():
        return None
    # a match at shifted offset k is the newline before a line that starts at offset k of the caller's text
    return start, end, indent, starts


def _compose(text: str) -> yaml.Node | None:
    try:
        nodes = [n for n in yaml.compose_all(text, Loader=_LOADER) if n is not None]
    except (yaml.YAMLError, RecursionError):
        return None
    return nodes[0] if len(nodes) == 1 else None


def _parse_chunk(text: str, file: str, line0: int) -> tuple[Chunk, int] | None:
    fast = read_service(text, line0, marks=False)  # the common plain shapes, without libyaml
    if fast is not None:
        name, value, _marks, used, rs_lines = fast
        return Chunk(line0, name, value, None, used, text, tuple(rs_lines)), used
    return _parse_chunk_libyaml(text, file, line0)


def _parse_chunk_libyaml(text: str, file: str, line0: int) -> tuple[Chunk, int] | None:
    root = _compose("\n" * line0 + text)
    if not isinstance(root, yaml.MappingNode) or len(root.value) != 1:
        return None
    doc = Document(file, None)
    errors: list[ConfigError] = []
    budget = [0]
    try:
        data = _convert(root, doc, ("services",), errors, budget, set())
    except Exception:  # ConfigInvalid (alias bomb, recursion) or RecursionError: the full parse reports it
        return None
    if errors or not isinstance(data, dict) or len(data) != 1:
        return None
    doc.marks.pop(("services",), None)
    (name, value), = data.items()
    return Chunk(line0, name, value, doc.marks, budget[0]), budget[0]


def parse_services_incrementally(text: str, file: str, previous: dict[str, Chunk]) -> Document | None:
    """The Document a full parse of `text` gives, reusing `previous` chunks; None = parse in full."""
    shape = _bounds(text)
    if shape is None:
        return None
    start, end, indent, starts = shape
    bounds = starts + [end]
    chunks: dict[str, Chunk] = {}
    services: dict[str, Any] = {}
    marks: dict[str, Any] = {}
    lines: dict[str, tuple[int, tuple[int, ...]]] = {}
    line = text.count("\n", 0, starts[0])
    nodes = 1
    pos = starts[0]
    for i, s in enumerate(starts):
        line += text.count("\n", pos, s)
        pos = s
        piece = text[s:bounds[i + 1]]
        old = previous.get(piece)
        if old is not None:
            chunk = old.at(line)
            nodes += chunk.nodes
        else:
            parsed = _parse_chunk(piece, file, line)
            if parsed is None:
                return None
            chunk, used = parsed
            nodes += used
        if chunk.name in services:
            return None  # duplicate service: the full parse words that error
        services[chunk.name] = chunk.value
        if chunk.marks is None:
            marks[chunk.name] = chunk.read_marks  # read when first asked for
            lines[chunk.name] = (chunk.line0 + 1, chunk.rs_lines)
        else:
            marks[chunk.name] = chunk.marks
        if "*" not in piece:  # an alias's value depends on another chunk: never reuse it
            chunks[piece] = chunk
    n_block = text.count("\n", start, end)
    root = _compose(text[:start] + "\n" * n_block + text[end:])
    if not isinstance(root, yaml.MappingNode):
        return None
    head = Document(file, None)
    errors: list[ConfigError] = []
    budget = [nodes]
    try:
        data = _convert(root, head, (), errors, budget, set())
    except Exception:
        return None
    if errors or not isinstance(data, dict) or "services" not in data or data["services"] is not None:
        return None
    if budget[0] > MAX_NODES:
        return None
    data["services"] = services
    head.service_marks = marks
    head.entry_lines = lines
    head.data = data
    head.chunks = chunks
    return head


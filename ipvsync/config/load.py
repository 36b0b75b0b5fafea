"""YAML text -> plain Python values plus a map from config path to FILE:LINE:COL.

Rules of residence: parsing only. Knows YAML and its traps (duplicate keys, YAML 1.1 booleans and
sexagesimal numbers, recursive or exploding aliases, non-mapping documents); knows nothing about
what the keys mean. Every problem is a `ConfigError` carrying file, line, column and path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_NODES = 200_000  # bounds alias expansion ("billion laughs")
_YAML11_BOOLS = frozenset("y Y yes Yes YES n N no No NO on On ON off Off OFF".split())
_NULLS = frozenset(["~", "null", "Null", "NULL", ""])
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
# groups: int, float, sexagesimal (YAML 1.1's base 60, a trap); tried only when a digit, sign or dot leads
_NUMBER = re.compile(r"[-+]?(?:(0|[1-9][0-9]*)|([0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                     r"|([0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?))\Z")


@dataclass(frozen=True)
class ConfigError:
    """One problem in a config file, printable as FILE:LINE:COL: path: message."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigInvalid(Exception):
    """Raised with every error found in a config (never just the first)."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass
class Document:
    """A parsed file: its values and where each value came from."""

    file: str
    data: Any
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    chunks: dict[str, Any] = field(default_factory=dict)  # services-block text -> Chunk (config.chunks)
    # service name -> marks under ("services", name), when kept per service (config.chunks); a
    # function returning them when they are read only when asked for
    service_marks: dict[str, Any] = field(default_factory=dict)
    # service name -> (base line, (its name's line, its real_servers items' lines) minus base): lazy marks
    entry_lines: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)

    def where(self, path: Path) -> tuple[int, int]:
        """Line/column of the value at `path`, or of its nearest ancestor."""
        p = tuple(path)
        if len(p) >= 2 and p[0] == "services" and p[1] in self.service_marks:
            sub = self.service_marks[p[1]]
            if not isinstance(sub, dict):
                sub = self.service_marks[p[1]] = sub()
            while len(p) >= 2:
                if p in sub:
                    return sub[p]
                p = p[:-1]
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get((), (1, 1))

    def line_of(self, path: Path) -> int:
        """where(path)[0], without reading lazily kept marks for a service or one of its real servers."""
        if len(path) in (2, 4) and path[0] == "services":
            lines = self.entry_lines.get(path[1])  # type: ignore[arg-type]
            if lines is not None:
                if len(path) == 2:
                    return lines[0] + lines[1][0]
                i = path[3]
                if path[2] == "real_servers" and type(i) is int and 0 <= i < len(lines[1]) - 1:
                    return lines[0] + lines[1][i + 1]
        return self.where(path)[0]

    def all_marks(self) -> dict[Path, tuple[int, int]]:
        """Every mark in one mapping (tests and tools; `where` is the lookup)."""
        out = dict(self.marks)
        for name in list(self.service_marks):
            sub = self.service_marks[name]
            if not isinstance(sub, dict):
                sub = self.service_marks[name] = sub()
            out.update(sub)
        return out

    def error(self, path: Path, message: str) -> ConfigError:
        line, col = self.where(path)
        return ConfigError(self.file, line, col, format_path(path), message)


def format_path(path: Path) -> str:
    """('services', 'web', 'real_servers', 1, 'port') -> services.web.real_servers[1].port"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _scalar(node: yaml.ScalarNode, doc: Document, path: Path, errors: list[ConfigError]) -> Any:
    text = node.value
    if node.style:  # quoted or block scalar: always a string (plain is None, or "" from libyaml)
        return text
    if not node.tag.startswith("tag:yaml.org,2002:") or node.tag.rsplit(":", 1)[-1] in (
            "binary", "set", "omap", "pairs") or node.tag.startswith("tag:yaml.org,2002:python"):
        errors.append(doc.error(path, f"YAML tag {node.tag!r} is not allowed; plain values only"))
        return text
    value, problem = resolve_plain(text)
    if problem:
        errors.append(doc.error(path, problem))
    return value


def resolve_plain(text: str) -> tuple[Any, str]:
    """The value of a plain (unquoted) scalar, and the trap it falls into ("" when none)."""
    if text in _YAML11_BOOLS:
        return text, f"{text!r} is a YAML 1.1 boolean trap; write true/false, or quote it for a string"
    if text in _NULLS:
        return None, ""
    if text in _BOOLS:
        return _BOOLS[text], ""
    if text[0] in "0123456789+-.":
        m = _NUMBER.match(text)
        if m is not None:
            if m.group(1) is not None:
                return int(text), ""
            if m.group(2) is not None:
                return float(text), ""
            return text, f"{text!r} is a YAML 1.1 sexagesimal number (base 60); quote it if you mean the text"
    return text, ""


def _convert(node: yaml.Node, doc: Document, path: Path, errors: list[ConfigError], budget: list[int],
             active: set[int]) -> Any:
    budget[0] += 1
    if budget[0] > MAX_NODES:
        raise ConfigInvalid([doc.error(path, f"document expands to more than {MAX_NODES} values (alias bomb?)")])
    doc.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if id(node) in active:
        raise ConfigInvalid([doc.error(path, "recursive YAML alias")])
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, doc, path, errors)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return [_convert(child, doc, path + (i,), errors, budget, active) for i, child in enumerate(node.value)]
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge" or (knode.value == "<<" and not getattr(knode, "style", None)):
                errors.append(doc.error(path, "YAML merge keys (<<) are not supported; write the keys out"))
                continue
            if not isinstance(knode, yaml.ScalarNode):
                line, col = knode.start_mark.line + 1, knode.start_mark.column + 1
                errors.append(ConfigError(doc.file, line, col, format_path(path), "mapping keys must be plain text"))
                continue
            key = knode.value
            if key in out:
                line, col = knode.start_mark.line + 1, knode.start_mark.column + 1
                first = doc.marks.get(path + (key,), (0, 0))[0]
                errors.append(ConfigError(doc.file, line, col, format_path(path + (key,)),
                                          f"duplicate key {key!r} (first defined on line {first})"))
                continue
            doc.marks[path + (key,)] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
            out[key] = _convert(vnode, doc, path + (key,), errors, budget, active)
        return out
    finally:
        active.discard(id(node))


def parse(text: str, file: str) -> Document:
    """Parse one YAML document into plain values with marks; raise ConfigInvalid on any problem."""
    doc = Document(file, None)
    try:
        try:
            # libyaml with the base resolver: no implicit-tag regexes per scalar (we type scalars ourselves)
            nodes = list(yaml.compose_all(text, Loader=getattr(yaml, "CBaseLoader", yaml.SafeLoader)))
        except yaml.YAMLError:
            # libyaml is fast; the pure-Python parser words its errors better: re-parse for the message
            nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        msg = f"{exc.problem or 'invalid YAML'}" + (f" ({exc.context})" if exc.context else "")
        raise ConfigInvalid([ConfigError(file, line, col, "", f"YAML syntax: {msg}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigInvalid([ConfigError(file, 0, 0, "", f"YAML syntax: {exc}")]) from None
    except RecursionError:
        raise ConfigInvalid([ConfigError(file, 0, 0, "", "YAML nesting too deep")]) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise ConfigInvalid([ConfigError(file, 1, 1, "", "the file is empty; expected a mapping with 'version: 1'")])
    if len(nodes) > 1:
        line = nodes[1].start_mark.line + 1
        raise ConfigInvalid([ConfigError(file, line, 1, "", "more than one YAML document; expected exactly one")])
    root = nodes[0]
    if not isinstance(root, yaml.MappingNode):
        line, col = root.start_mark.line + 1, root.start_mark.column + 1
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        raise ConfigInvalid([ConfigError(file, line, col, "", f"the document is {kind}; expected a mapping of keys")])
    errors: list[ConfigError] = []
    try:
        doc.data = _convert(root, doc, (), errors, [0], set())
    except RecursionError:
        raise ConfigInvalid([ConfigError(file, 0, 0, "", "YAML nesting too deep")]) from None
    if errors:
        raise ConfigInvalid(errors)
    return doc

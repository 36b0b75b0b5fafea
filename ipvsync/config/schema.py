"""Structural validation against schemas/ipvsync.schema.json, errors mapped to FILE:LINE:COL.

Rules of residence: the JSON Schema is the structural truth; this module only finds it, runs it and
turns jsonschema's errors into `ConfigError`s a sysadmin can act on. Semantics live in build.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from functools import lru_cache
from pathlib import Path as FsPath
from typing import Any

from ipvsync.config.load import ConfigError, Document

SCHEMA_NAME = "ipvsync.schema.json"


def schema_path() -> FsPath:
    """Where the schema is: $IPVSYNC_SCHEMA, the source tree, the wheel's data dir, or /usr/share."""
    candidates = []
    if os.environ.get("IPVSYNC_SCHEMA"):
        candidates.append(FsPath(os.environ["IPVSYNC_SCHEMA"]))
    here = FsPath(__file__).resolve().parent
    candidates += [
        here.parent.parent / "schemas" / SCHEMA_NAME,
        here.parent / "data" / SCHEMA_NAME,
        FsPath(sys.prefix) / "share" / "ipvsync" / SCHEMA_NAME,
        FsPath(sys.prefix) / "share" / "ipvsync" / "schemas" / SCHEMA_NAME,
        FsPath("/usr/local/share/ipvsync") / SCHEMA_NAME,
        FsPath("/usr/share/ipvsync") / SCHEMA_NAME,
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{SCHEMA_NAME} not found (looked in {', '.join(str(c) for c in candidates)})")


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with open(schema_path(), encoding="utf-8") as fh:
        return json.load(fh)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local $ref replaced by its target (our schema has no cycles):
    validation then skips the reference resolver, which dominated the cost of big configs."""
    if isinstance(node, dict):
        out = {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = _inline(defs[ref[len("#/$defs/"):]], defs)
            if not out:
                return target
            return {"allOf": [target], **out}
        return out
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


@lru_cache(maxsize=1)
def _root_schema() -> dict[str, Any]:
    """The whole-document schema with its $refs inlined (shared by jsonschema and the quick check)."""
    root = load_schema()
    return _inline({k: v for k, v in root.items() if k != "$defs"}, root["$defs"])


@lru_cache(maxsize=1)
def _service_schema() -> dict[str, Any]:
    """One service's schema with its $refs inlined (shared by jsonschema and the quick check)."""
    root = load_schema()
    return _inline(root["$defs"]["service"], root["$defs"])


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_root_schema())


def _message(error: Any) -> str:
    v = error.validator
    inst = error.instance
    if isinstance(error.schema, dict) and error.schema.get("x-message") and v in ("pattern", "type"):
        return f"{inst!r}: {error.schema['x-message']}"
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(inst) - set(allowed)) if isinstance(inst, dict) else []
        what = ", ".join(repr(x) for x in extra) or "a key"
        return f"unknown key {what}; allowed: {', '.join(allowed)}"
    if v == "enum":
        return f"{inst!r} is not one of: {', '.join(str(x) for x in error.validator_value)}"
    if v == "const":
        return f"{inst!r} is not allowed; expected {error.validator_value!r}"
    if v == "pattern" and error.schema.get("description"):
        return f"{inst!r} does not match {error.validator_value!r} ({error.schema['description']})"
    return error.message


@lru_cache(maxsize=1)
def _service_validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_service_schema())


def content_key(value: Any) -> bytes:
    """A 16-byte digest of a parsed value's canonical JSON: a compact cache key (10k of them)."""
    return hashlib.blake2b(json.dumps(value, sort_keys=True, default=str).encode(), digest_size=16).digest()


_SERVICE_ERRORS: dict[bytes, list[tuple[tuple[Any, ...], str]]] = {}
# per file: id(service value) -> (that value, its errors), for values reused unchanged by config.chunks
_LAST_SEEN: dict[str, dict[int, tuple[Any, list[tuple[tuple[Any, ...], str]]]]] = {}


def _collect(validator: Any, instance: Any, prefix: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """(path, message) for every error, paths made absolute with `prefix`. The schema uses
    if/then/else rather than oneOf, so jsonschema already reports the error of the matching shape."""
    out: list[tuple[tuple[Any, ...], str]] = []
    seen: set[tuple[Any, str]] = set()
    for err in validator.iter_errors(instance):
        path = prefix + tuple(err.absolute_path)
        msg = _message(err)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if len(extra) == 1:
                path = path + (extra[0],)
        if (path, msg) not in seen:
                seen.add((path, msg))
                out.append((path, msg))
    return out


@lru_cache(maxsize=1)
def _quick_root() -> Any:
    from ipvsync.config.quickcheck import compile_schema

    return compile_schema(_root_schema())


@lru_cache(maxsize=1)
def _quick_service() -> Any:
    from ipvsync.config.quickcheck import compile_schema

    return compile_schema(_service_schema())


def validate(doc: Document) -> list[ConfigError]:
    """Every structural error of a parsed document, sorted by line.

    Services are validated one by one and their results cached by content, so a reload of a
    10,000-real-server file after a one-line edit validates one service, not all of them.
    """
    data = doc.data
    found: list[tuple[tuple[Any, ...], str]] = []
    services = data.get("services") if isinstance(data, dict) else None
    if isinstance(services, dict):
        top = {**data, "services": {}}
        if not _quick_root()(top):
            found += _collect(_validator(), top, ())
        pattern = load_schema()["properties"]["services"]["propertyNames"]["pattern"]
        name_ok = re.compile(pattern).search
        for name in services:
            if not name_ok(name):
                found.append((("services", name), f"service name {name!r} must match {pattern}"))
        last = _LAST_SEEN.get(doc.file, {})
        seen: dict[int, tuple[Any, list[tuple[tuple[Any, ...], str]]]] = {}
        quick = _quick_service()
        for name, svc in services.items():
            hit = last.get(id(svc))
            if hit is not None and hit[0] is svc:  # the very value parsed before (config.chunks reuse)
                errs = hit[1]
            elif quick(svc):
                errs = []  # surely valid (config.quickcheck): no jsonschema pass needed
            else:
                key = content_key(svc)
                errs = _SERVICE_ERRORS.get(key)
                if errs is None:
                    errs = _collect(_service_validator(), svc, ())
                    if len(_SERVICE_ERRORS) > 50_000:
                        _SERVICE_ERRORS.clear()
                    _SERVICE_ERRORS[key] = errs
            seen[id(svc)] = (svc, errs)
            found += [(("services", name) + path, msg) for path, msg in errs]
        _LAST_SEEN[doc.file] = seen
    elif not _quick_root()(data):
        found += _collect(_validator(), data, ())
    errors = [doc.error(path, msg) for path, msg in found]
    errors.sort(key=lambda e: (e.line, e.column))
    return errors


def schema_json() -> str:
    return json.dumps(load_schema(), indent=2)

"""A fast "surely valid" pre-check compiled from the JSON Schema (the schema stays the truth).

jsonschema spends ~30 us per real server of a 10,000-server config (its generic descend/evolve
machinery); a config is valid almost always. `compile_schema` turns the keyword subset our schema
uses into nested closures that answer True only when every keyword holds with the same semantics
as jsonschema's Draft 2020-12 validator; on any doubt (a keyword it does not know, a bool where a
number is expected in enum/const, uniqueItems over unhashable values) it answers False, and the
caller runs jsonschema, which finds and words the errors. A False is never an error by itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "x-message", "$schema", "$id"})


def _never(_value: Any) -> bool:
    return False


def _always(_value: Any) -> bool:
    return True


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float)
    return False


def _plain(value: Any) -> bool:
    """Scalars whose equality in Python is JSON equality (no bool/number mixing, no floats)."""
    return value is None or isinstance(value, str | bool) or (isinstance(value, int) and not isinstance(value, bool))


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def compile_schema(schema: Any) -> Check:
    """A function value -> bool: True only if `schema` surely accepts the value."""
    if schema is True:
        return _always
    if not isinstance(schema, dict):
        return _never
    checks: list[Check] = []
    for key, arg in schema.items():
        if key in ANNOTATIONS or key in ("then", "else"):
            continue
        made = _keyword(key, arg, schema)
        if made is None:
            return _never  # a keyword this checker does not know: leave it to jsonschema
        checks.append(made)
    return _all_of(checks)


def _all_of(checks: list[Check]) -> Check:
    """One check that holds when every one of `checks` holds (a plain loop: cheaper than all() + genexpr)."""
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda v: a(v) and b(v)

    def every(v: Any) -> bool:
        for c in checks:
            if not c(v):
                return False
        return True
    return every


_PY_TYPES: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list, "string": str}


def _type_check(names: list[str]) -> Check:
    if len(names) == 1 and names[0] in _PY_TYPES:
        py = _PY_TYPES[names[0]]
        return lambda v: isinstance(v, py)
    return lambda v: any(_is_type(v, n) for n in names)


def _keyword(key: str, arg: Any, schema: dict[str, Any]) -> Check | None:
    if key == "type":
        return _type_check(arg if isinstance(arg, list) else [arg])
    if key == "enum" or key == "const":
        options = arg if key == "enum" else [arg]
        if not all(_plain(o) for o in options):
            return None
        return lambda v: _plain(v) and any(_same(v, o) for o in options)
    if key == "pattern":
        rx = re.compile(arg)
        return lambda v: not isinstance(v, str) or rx.search(v) is not None
    if key in ("minLength", "maxLength"):
        n = arg
        return (lambda v: not isinstance(v, str) or len(v) >= n) if key == "minLength" else \
            (lambda v: not isinstance(v, str) or len(v) <= n)
    if key in ("minimum", "maximum"):
        n = arg

        def number(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool)
        return (lambda v: not number(v) or v >= n) if key == "minimum" else (lambda v: not number(v) or v <= n)
    if key in ("minItems", "maxItems"):
        n = arg
        return (lambda v: not isinstance(v, list) or len(v) >= n) if key == "minItems" else \
            (lambda v: not isinstance(v, list) or len(v) <= n)
    if key == "uniqueItems":
        if not arg:
            return _always

        def unique(v: Any) -> bool:
            if not isinstance(v, list):
                return True
            if not all(_plain(x) for x in v):
                return False  # dicts, floats: not sure how jsonschema compares them; let it decide
            return len({(type(x), x) for x in v}) == len(v)
        return unique
    if key == "required":
        required = frozenset(arg)
        return lambda v: not isinstance(v, dict) or v.keys() >= required
    if key == "properties":
        props = {name: compile_schema(sub) for name, sub in arg.items()}

        def properties(v: Any) -> bool:
            if isinstance(v, dict):
                for k, x in v.items():
                    c = props.get(k)
                    if c is not None and not c(x):
                        return False
            return True
        return properties
    if key == "additionalProperties":
        known = frozenset(schema.get("properties", {}))
        if "patternProperties" in schema:
            return None
        if arg is False:
            return lambda v: not isinstance(v, dict) or known.issuperset(v)
        extra = compile_schema(arg)
        return lambda v: not isinstance(v, dict) or all(k in known or extra(x) for k, x in v.items())
    if key == "propertyNames":
        names_ok = compile_schema(arg)
        return lambda v: not isinstance(v, dict) or all(names_ok(k) for k in v)
    if key == "items":
        if isinstance(arg, list) or "prefixItems" in schema:
            return None
        each = compile_schema(arg)

        def items(v: Any) -> bool:
            if isinstance(v, list):
                for x in v:
                    if not each(x):
                        return False
            return True
        return items
    if key == "allOf":
        return _all_of([compile_schema(s) for s in arg])
    if key == "if":
        cond = compile_condition(arg)
        then = compile_schema(schema.get("then", True))
        other = compile_schema(schema.get("else", True))
        if cond is None:
            return None
        return lambda v: then(v) if cond(v) else other(v)
    return None


def compile_condition(schema: Any) -> Check | None:
    """An exact predicate for an `if` schema (its truth picks then/else, so "unsure" is not allowed):
    only `type`, `const`, `enum`, `required` and `properties` of those are supported."""
    if schema is True:
        return _always
    if not isinstance(schema, dict):
        return None
    parts: list[Check] = []
    for key, arg in schema.items():
        if key in ANNOTATIONS:
            continue
        if key == "type":
            parts.append(_type_check(arg if isinstance(arg, list) else [arg]))
        elif key in ("const", "enum"):
            options = arg if key == "enum" else [arg]
            if not all(isinstance(o, str) for o in options):
                return None  # string constants only: equality is then exact
            parts.append(lambda v, options=options: isinstance(v, str) and v in options)
        elif key == "required":
            names = list(arg)
            parts.append(lambda v, names=names: not isinstance(v, dict) or all(n in v for n in names))
        elif key == "properties":
            props = {}
            for name, sub in arg.items():
                cond = compile_condition(sub)
                if cond is None:
                    return None
                props[name] = cond
            parts.append(lambda v, props=props: not isinstance(v, dict) or all(
                c(v[n]) for n, c in props.items() if n in v))
        else:
            return None
    return _all_of(parts)

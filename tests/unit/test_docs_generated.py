"""The man pages and docs/configuration.md are generated from the JSON Schema and the CLI parser.

Fails when a committed file is stale: change the schema (or the parser), run `make man`, commit.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gen():
    spec = importlib.util.spec_from_file_location("ipvsync_gen_docs", ROOT / "packaging" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


GEN = _gen()
GENERATED = GEN.generate()


@pytest.mark.parametrize("path", sorted(GENERATED), ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_file_is_current(path: Path) -> None:
    assert path.exists(), f"{path.relative_to(ROOT)} missing: run `make man`"
    assert path.read_text() == GENERATED[path], (
        f"{path.relative_to(ROOT)} is stale: run `make man` and commit"
    )


def _schema_keys() -> set[str]:
    """Every property name the schema defines, anywhere."""
    schema = json.loads((ROOT / "schemas" / "ipvsync.schema.json").read_text())
    keys: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.get("properties", {}).items():
                keys.add(k)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return keys


def test_every_schema_key_is_documented() -> None:
    md_names = re.findall(r"^\| `([^`]+)`", GENERATED[GEN.OUT_MD], re.M)
    man5 = GENERATED[GEN.OUT_MAN5]
    for key in _schema_keys():
        assert any(n == key or n.endswith("." + key) for n in md_names), f"{key} not in docs/configuration.md"
        assert key.replace("-", "\\-") in man5, f"{key} not in ipvsync.yaml(5)"


def test_every_description_reaches_the_docs() -> None:
    """A description edited in the schema shows up verbatim in the markdown reference."""
    schema = json.loads((ROOT / "schemas" / "ipvsync.schema.json").read_text())
    md = GENERATED[GEN.OUT_MD].replace("\\|", "|")
    descs: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("description"), str):
                descs.append(node["description"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    # alternatives of a oneOf describe a shape, not a key; the real_server string form is quoted
    absent = [d for d in descs if d not in md]
    assert not absent, f"schema descriptions missing from docs/configuration.md: {absent}"


def test_man8_lists_every_command() -> None:
    from ipvsync.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    man8 = GENERATED[GEN.OUT_MAN8]
    for name in sub.choices:
        assert f".B {name.replace('-', chr(92) + '-')}" in man8, name


def test_man_pages_render(tmp_path: Path) -> None:
    """groff parses both pages without warnings (when man-db/groff is installed)."""
    import shutil
    import subprocess

    if not shutil.which("groff"):
        pytest.skip("groff not installed")
    for path in (GEN.OUT_MAN5, GEN.OUT_MAN8):
        r = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(path)], capture_output=True, text=True
        )
        assert r.returncode == 0 and not r.stderr.strip(), f"{path.name}: {r.stderr}"

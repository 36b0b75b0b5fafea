#!/usr/bin/env python3
"""Generate the configuration reference from the JSON Schema, and the man pages.

Writes packaging/man/ipvsync.yaml.5, packaging/man/ipvsync.8 and docs/configuration.md. The key
reference in all three comes from schemas/ipvsync.schema.json (its `description`s, types, enums and
defaults); the command list in ipvsync(8) from ipvsync.cli's argument parser. Nothing here is edited
by hand: change the schema or the parser and run `make man`. `--check` exits 1 when a committed file
differs from what would be generated (tests/unit/test_docs_generated.py runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = ROOT / "schemas" / "ipvsync.schema.json"
EXAMPLE = ROOT / "ipvsync.yaml.example"
OUT_MAN5 = HERE / "man" / "ipvsync.yaml.5"
OUT_MAN8 = HERE / "man" / "ipvsync.8"
OUT_MD = ROOT / "docs" / "configuration.md"

# Named $defs shown by name in the type column, with what they accept.
SCALAR_DEFS = {
    "duration": "duration",
    "address": "address",
    "port": "port (1-65535)",
    "weight": "integer (0-2147483647)",
    "threshold": "integer (0-4294967295, 0 = no limit)",
    "ifname": "interface name",
}


@dataclass
class Entry:
    name: str
    type: str
    default: str | None
    description: str


@dataclass
class Section:
    title: str
    intro: str
    entries: list[Entry] = field(default_factory=list)


class Doc:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.defs: dict[str, Any] = schema.get("$defs", {})

    def ref(self, s: Any) -> tuple[str | None, dict[str, Any]]:
        if isinstance(s, dict) and "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[-1]
            return name, self.defs[name]
        return None, s if isinstance(s, dict) else {}

    def type_of(self, s: dict[str, Any]) -> str:
        name, target = self.ref(s)
        if name in SCALAR_DEFS:
            return SCALAR_DEFS[name]
        if name in ("protocol", "scheduler", "forward"):
            return self.type_of(target)
        if name in ("health", "persistence", "tunnel", "defaults", "service"):
            return f"mapping (see {self.section_title(name)})"
        if name == "scheduler_flags":
            return self.type_of(target)
        s = target if name else s
        if "const" in s:
            return json.dumps(s["const"])
        if "enum" in s:
            return "one of: " + ", ".join(str(v) for v in s["enum"])
        if "oneOf" in s:
            return " or ".join(self.type_of(alt) for alt in s["oneOf"])
        if "if" in s and "then" in s and "else" in s:
            return " or ".join(self.type_of(alt) for alt in (s["then"], s["else"]))
        t = s.get("type")
        if t == "array":
            items = s.get("items", {})
            iname, _ = self.ref(items)
            if iname == "real_server":
                return "list of real servers (see Real server keys)"
            return f"list of {self.type_of(items)}"
        if t == "object":
            aname, _ = self.ref(s.get("additionalProperties"))
            if aname:
                return f"mapping of name to {aname} (see {self.section_title(aname)})"
            return "mapping"
        if t in ("integer", "number"):
            lo, hi = s.get("minimum"), s.get("maximum")
            word = "integer" if t == "integer" else "number"
            if lo is not None and hi is not None:
                return f"{word} ({lo}-{hi})"
            if lo is not None:
                return f"{word} (>= {lo})"
            return word
        if t == "string":
            if "pattern" in s and "description" not in s:
                return f"string matching {s['pattern']}"
            return "string"
        if t == "boolean":
            return "boolean"
        return t or "any"

    def describe(self, s: dict[str, Any]) -> str:
        if isinstance(s, dict) and s.get("description"):
            return s["description"]
        name, target = self.ref(s)
        if name and name not in ("health", "persistence", "tunnel"):
            return target.get("description", "")
        return ""

    def default_of(self, s: dict[str, Any]) -> str | None:
        if isinstance(s, dict) and "default" in s:
            return json.dumps(s["default"]) if not isinstance(s["default"], str) else s["default"]
        return None

    @staticmethod
    def section_title(name: str) -> str:
        return {
            "health": "Health check keys",
            "persistence": "Persistence keys",
            "tunnel": "Tunnel keys",
            "defaults": "Common keys",
            "service": "Service keys",
        }.get(name, name)

    def props(self, s: dict[str, Any]) -> dict[str, Any]:
        """Properties with `true` placeholders filled from the allOf'd $defs (common)."""
        out: dict[str, Any] = {}
        inherited: dict[str, Any] = {}
        for part in s.get("allOf", []):
            _, t = self.ref(part)
            inherited.update(t.get("properties", {}))
        for k, v in s.get("properties", {}).items():
            out[k] = inherited.get(k, v) if v is True else v
        return out

    def entries(self, s: dict[str, Any], prefix: str = "", skip: tuple[str, ...] = ()) -> list[Entry]:
        out = []
        for key, sub in self.props(s).items():
            if key in skip:
                continue
            name = f"{prefix}{key}"
            _, target = self.ref(sub)
            inline_obj = "$ref" not in sub and sub.get("type") == "object" and "properties" in sub
            inline_list = (
                "$ref" not in sub
                and sub.get("type") == "array"
                and isinstance(sub.get("items"), dict)
                and sub["items"].get("type") == "object"
            )
            out.append(
                Entry(
                    name,
                    self.type_of(sub),
                    self.default_of(sub) or self.default_of(target),
                    self.describe(sub),
                )
            )
            if inline_obj:
                out += self.entries(sub, f"{name}.")
            elif inline_list:
                out += self.entries(sub["items"], f"{name}[].")
        return out

    def sections(self) -> list[Section]:
        d = self.defs
        common_keys = tuple(d["common"]["properties"])
        alts = d["real_server"].get("oneOf") or [d["real_server"]["then"], d["real_server"]["else"]]
        rs_obj = next(alt for alt in alts if alt.get("type") == "object")
        rs_str = next(alt for alt in alts if alt.get("type") == "string")
        return [
            Section("Top-level keys", self.schema.get("description", ""), self.entries(self.schema)),
            Section(
                "Service keys",
                d["service"]["description"] + " Each key of `services:` names one; "
                "besides the keys below, a service takes every common key.",
                self.entries(d["service"], skip=common_keys),
            ),
            Section(
                "Common keys",
                d["common"]["description"] + " A real server takes the ones listed under Real server keys.",
                self.entries(d["defaults"]),
            ),
            Section(
                "Real server keys",
                f"An entry of `real_servers:`: a string ({rs_str['description']}) "
                "or a mapping with these keys.",
                self.entries(rs_obj),
            ),
            Section("Health check keys", d["health"]["description"], self.entries(d["health"])),
            Section("Persistence keys", d["persistence"]["description"], self.entries(d["persistence"])),
            Section("Tunnel keys", d["tunnel"]["description"], self.entries(d["tunnel"])),
            Section(
                "Value formats",
                "",
                [
                    Entry("duration", "number or string", None, d["duration"]["description"]),
                    Entry("address", "string", None, d["address"]["description"]),
                    Entry(
                        "scheduler",
                        "string",
                        None,
                        d["scheduler"]["description"] + " One of: " + ", ".join(d["scheduler"]["enum"]) + ".",
                    ),
                ],
            ),
        ]


# ---------------------------------------------------------------------------------------------- roff


def roff_text(text: str) -> str:
    """Escape for roff running text; `code` becomes bold."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"`([^`]+)`", lambda m: "\\fB" + m.group(1) + "\\fR", text)
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def roff_name(text: str) -> str:
    return roff_text(text).replace("-", "\\-")


def man5(doc: Doc, version: str) -> str:
    out = [
        '.\\" Generated by packaging/gen_docs.py from schemas/ipvsync.schema.json. Do not edit.',
        f'.TH IPVSYNC.YAML 5 "" "ipvsync {version}" "File Formats"',
        ".SH NAME",
        "ipvsync.yaml \\- ipvsync configuration file",
        ".SH SYNOPSIS",
        ".B /etc/ipvsync/ipvsync.yaml",
        ".SH DESCRIPTION",
        roff_text(
            "The declarative description of the IPVS virtual services, real servers, VIP addresses "
            "and health checks that `ipvsync run` keeps the kernel converged to. It is YAML; its "
            "structure is the JSON Schema in /usr/share/ipvsync/ipvsync.schema.json (also printed "
            "by `ipvsync schema`), from which this reference is generated."
        ),
        ".PP",
        roff_text(
            "Validate a file with `ipvsync check -c FILE`: every error is reported as FILE:LINE:COLUMN. "
            "The daemon applies a saved edit by itself; `systemctl reload ipvsync` applies and waits, "
            "and fails, keeping the running state, when the new file is invalid."
        ),
    ]
    for sec in doc.sections():
        out.append(f".SH {sec.title.upper()}")
        if sec.intro:
            out.append(roff_text(sec.intro))
        for e in sec.entries:
            out.append(".TP")
            out.append(f".B {roff_name(e.name)}")
            meta = roff_text(e.type) + (f"; default \\fB{roff_text(e.default)}\\fR" if e.default else "")
            out.append(f"\\fI{meta}\\fR" if "\\f" not in meta else meta)
            if e.description:
                out.append(".br")
                out.append(roff_text(e.description))
    out += [".SH EXAMPLE", ".nf", ".RS"]
    out += [roff_text(line) if line else "" for line in EXAMPLE.read_text().rstrip("\n").split("\n")]
    out += [
        ".RE",
        ".fi",
        ".SH FILES",
        ".TP",
        ".B /etc/ipvsync/ipvsync.yaml",
        "The configuration (a conffile: upgrades keep your edits).",
        ".TP",
        ".B /usr/share/ipvsync/ipvsync.schema.json",
        "The JSON Schema of this file.",
        ".TP",
        ".B /usr/share/doc/ipvsync/examples/",
        "Annotated examples.",
        ".SH SEE ALSO",
        "\\fBipvsync\\fR(8), \\fBipvsadm\\fR(8), \\fBsystemd.exec\\fR(5)",
        "",
    ]
    return "\n".join(out)


def parser_commands() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(command, help, [(option, help)]) from ipvsync.cli's argparse parser."""
    sys.path.insert(0, str(ROOT))
    from ipvsync.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    out = []
    common = {"-c", "--config", "--state-dir", "--runtime-dir", "-v", "--verbose", "-h", "--help"}
    for name, p in sub.choices.items():
        opts = []
        for a in p._actions:
            if set(a.option_strings) & common:
                continue
            label = ", ".join(a.option_strings) if a.option_strings else a.dest.upper().replace("_", "-")
            if a.option_strings and a.nargs != 0:
                label += f" {a.metavar or a.dest.upper()}"
            opts.append((label, a.help or ""))
        out.append((name, helps.get(name, ""), opts))
    return out


def exit_codes() -> list[tuple[str, str]]:
    from ipvsync import cli

    doc = cli.__doc__ or ""
    m = re.search(r"Exit codes[^:]*:(.*?)(?:\n\n|\Z)", doc, re.S)
    text = " ".join(m.group(1).split()) if m else ""
    return [(c, t.strip().rstrip(".")) for c, t in re.findall(r"(\d+) ([^·]+)", text)]


def man8(version: str) -> str:
    out = [
        '.\\" Generated by packaging/gen_docs.py from ipvsync/cli.py. Do not edit.',
        f'.TH IPVSYNC 8 "" "ipvsync {version}" "System Administration"',
        ".SH NAME",
        "ipvsync \\- declarative IPVS virtual services, VIPs and health checks",
        ".SH SYNOPSIS",
        ".B ipvsync",
        "[\\fB\\-c\\fR \\fIFILE\\fR] [\\fB\\-\\-state\\-dir\\fR \\fIDIR\\fR] "
        "[\\fB\\-\\-runtime\\-dir\\fR \\fIDIR\\fR] [\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
        roff_text(
            "ipvsync keeps the kernel's IPVS table (virtual services and real servers), the VIP "
            "addresses and the IPVS sysctls converged to a YAML file, ipvsync.yaml(5), and health-checks "
            "the real servers. It replaces the LVS half of keepalived; VRRP is not its business "
            "(`vip_mode: external` lets another program own the addresses)."
        ),
        ".PP",
        roff_text(
            "`ipvsync run` is the daemon, normally started by systemd as ipvsync.service. It owns only "
            "what it created or adopted (recorded in the state directory); stopping or restarting it "
            "leaves the kernel state in place, so a restart does not interrupt traffic."
        ),
        ".SH OPTIONS",
        ".TP",
        '.BR \\-c ", " \\-\\-config " " \\fIFILE\\fR',
        "The configuration (default /etc/ipvsync/ipvsync.yaml).",
        ".TP",
        '.BR \\-\\-state\\-dir " " \\fIDIR\\fR',
        "Ownership records (default /var/lib/ipvsync).",
        ".TP",
        '.BR \\-\\-runtime\\-dir " " \\fIDIR\\fR',
        "Runtime lock and the daemon's control socket (default /run/ipvsync).",
        ".TP",
        '.BR \\-v ", " \\-\\-verbose',
        "Print every operation.",
        ".SH COMMANDS",
    ]
    for name, help_, opts in parser_commands():
        out += [".TP", f".B {roff_name(name)}", roff_text(help_[:1].upper() + help_[1:] + ".")]
        for label, ohelp in opts:
            out += [".RS", ".TP", f".B {roff_name(label)}", roff_text(ohelp or ""), ".RE"]
    out += [".SH EXIT STATUS"]
    for code, text in exit_codes():
        out += [".TP", f".B {code}", roff_text(text[:1].upper() + text[1:] + ".")]
    out += [
        ".SH SYSTEMD",
        roff_text(
            "ipvsync.service is Type=notify: it is active once the first convergence is done. "
            "`systemctl reload ipvsync` runs `ipvsync reload`, which waits for the daemon's verdict: "
            "it fails (exit 1 rejected, 5 rolled back) when the new file is invalid or cannot be "
            "applied, and the daemon keeps the last good configuration. The journal entries carry the "
            "fields VIP, REAL_SERVER, SERVICE, CONFIG_FILE and CONFIG_LINE, e.g. "
            "`journalctl -u ipvsync VIP=192.0.2.10`."
        ),
        ".SH ENVIRONMENT",
        ".TP",
        ".B IPVSYNC_SCHEMA",
        "Use this JSON Schema file instead of the installed one.",
        ".SH FILES",
        ".TP",
        ".B /etc/ipvsync/ipvsync.yaml",
        "Configuration; see \\fBipvsync.yaml\\fR(5).",
        ".TP",
        ".B /var/lib/ipvsync/",
        "State: which kernel objects ipvsync owns.",
        ".TP",
        ".B /run/ipvsync/",
        "Runtime lock and control socket.",
        ".TP",
        ".B /usr/share/ipvsync/ipvsync.schema.json",
        "The configuration's JSON Schema.",
        ".SH SEE ALSO",
        "\\fBipvsync.yaml\\fR(5), \\fBipvsadm\\fR(8), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)",
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ markdown


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(doc: Doc) -> str:
    out = [
        "<!-- Generated by packaging/gen_docs.py from schemas/ipvsync.schema.json. Do not edit: "
        "change the schema and run `make man`. -->",
        "# ipvsync configuration reference",
        "",
        "The configuration file is YAML, by default `/etc/ipvsync/ipvsync.yaml`. Its structure is the JSON "
        "Schema `schemas/ipvsync.schema.json` (installed as `/usr/share/ipvsync/ipvsync.schema.json`); "
        "this page and `ipvsync.yaml(5)` are generated from it. Validate with `ipvsync check -c FILE`.",
        "",
    ]
    for sec in doc.sections():
        out += [f"## {sec.title}", ""]
        if sec.intro:
            out += [sec.intro, ""]
        out += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for e in sec.entries:
            default = f"`{e.default}`" if e.default else ""
            out.append(f"| `{e.name}` | {md_cell(e.type)} | {md_cell(default)} | {md_cell(e.description)} |")
        out.append("")
    out += ["## Example", "", "```yaml", EXAMPLE.read_text().rstrip("\n"), "```", ""]
    return "\n".join(out)


def generate() -> dict[Path, str]:
    sys.path.insert(0, str(ROOT))
    from ipvsync import __version__

    doc = Doc(json.loads(SCHEMA.read_text()))
    return {OUT_MAN5: man5(doc, __version__), OUT_MAN8: man8(__version__), OUT_MD: markdown(doc)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate man pages and docs/configuration.md from the schema.")
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed file is stale")
    args = ap.parse_args(argv)
    stale = []
    for path, text in generate().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run `make man` and commit)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

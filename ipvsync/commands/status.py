"""`ipvsync status [SERVICE] [--json]`: the running daemon's view (exit 4 when no daemon runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(args: argparse.Namespace) -> int:
    from ipvsync.control import ControlUnavailable, request
    from ipvsync.status import render

    try:
        answer = request(args.runtime_dir, {"cmd": "status", "service": args.service}, timeout=30)
    except ControlUnavailable as exc:
        print(f"ipvsync: {exc}; `ipvsync plan` shows the kernel against the config without a daemon",
              file=sys.stderr)
        return 4
    if not answer.get("ok"):
        print(f"ipvsync: {answer.get('error')}", file=sys.stderr)
        return 2
    doc = answer["status"]
    if args.service and not doc.get("services"):
        print(f"ipvsync: no service {args.service!r} in the config", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
    else:
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None and os.environ.get("TERM") != "dumb"
        print(render(doc, color=color))
    return 0

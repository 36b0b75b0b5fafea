"""`ipvsync drain SERVICE REAL_SERVER`: weight 0 until undrain, persisted across restarts."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace, cmd: str) -> int:
    from ipvsync.control import ControlUnavailable, request

    try:
        answer = request(args.runtime_dir, {"cmd": cmd, "service": args.service, "real_server": args.real_server})
    except ControlUnavailable as exc:
        print(f"ipvsync: {exc}; {cmd} needs the running daemon (systemctl start ipvsync)", file=sys.stderr)
        return 4
    if not answer.get("ok"):
        print(f"ipvsync: {answer.get('error', cmd + ' failed')}", file=sys.stderr)
        return 2
    print(answer.get("message", "ok"))
    return 0


def main(args: argparse.Namespace) -> int:
    return run(args, "drain")

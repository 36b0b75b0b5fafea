"""`ipvsync run`: the long-running service."""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    from ipvsync.daemon import main as run_daemon

    return run_daemon(args.config, args.state_dir, args.runtime_dir, getattr(args, "remove_on_exit", False))

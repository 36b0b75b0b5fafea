"""`ipvsync undrain SERVICE REAL_SERVER`: back to its effective weight."""

from __future__ import annotations

import argparse

from ipvsync.commands.drain import run


def main(args: argparse.Namespace) -> int:
    return run(args, "undrain")

"""`ipvsync import-keepalived FILE`: keepalived.conf -> ipvsync YAML; lists what it could not carry over."""

from __future__ import annotations

import argparse
import sys


def main(args: argparse.Namespace) -> int:
    from ipvsync.importers.keepalived import KeepalivedParseError, import_keepalived

    try:
        text, notes = import_keepalived(args.file)
    except KeepalivedParseError as exc:
        print(f"ipvsync: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ipvsync: cannot read {exc.filename or args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    for n in notes:
        print(f"not carried over: {n}", file=sys.stderr)
    return 0

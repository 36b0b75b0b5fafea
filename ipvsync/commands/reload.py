"""`ipvsync reload`: synchronous reload over the control socket (the unit's ExecReload=).

Exit 0 applied, 1 config rejected (errors printed), 5 rolled back, 6 rollback failed, 4 no daemon.
"""

from __future__ import annotations

import argparse
import sys


def main(args: argparse.Namespace) -> int:
    from ipvsync.control import ControlUnavailable, request

    try:
        answer = request(args.runtime_dir, {"cmd": "reload"}, timeout=600)
    except ControlUnavailable as exc:
        print(f"ipvsync: {exc}; start it with `systemctl start ipvsync`", file=sys.stderr)
        return 4
    code = int(answer.get("code", 4))
    if code == 0:
        print(f"reload: {answer.get('message', 'applied')}")
    else:
        for e in answer.get("errors", []):
            print(e, file=sys.stderr)
        print(f"ipvsync: reload {answer.get('result', 'failed')}: {answer.get('message', answer.get('error', ''))}",
              file=sys.stderr)
    return code

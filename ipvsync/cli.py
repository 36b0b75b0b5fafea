"""Command line: arguments -> one call into the layers below; output formatting only.

Exit codes (all commands): 0 ok · 1 invalid config · 2 usage or unreadable file · 3 changes pending
(`plan --exit-code`) · 4 no IPVS / no permission / kernel error / daemon not reachable · 5 apply
failed and was rolled back · 6 rollback failed.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import sys
from typing import Any

from ipvsync import __version__

DEFAULT_CONFIG = "/etc/ipvsync/ipvsync.yaml"
DEFAULT_STATE_DIR = "/var/lib/ipvsync"
DEFAULT_RUNTIME_DIR = "/run/ipvsync"

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_PENDING, EXIT_KERNEL, EXIT_ROLLED_BACK, EXIT_ROLLBACK_FAILED = range(7)


def _err(msg: str) -> None:
    print(f"ipvsync: {msg}", file=sys.stderr)


def load(path: str) -> Any:
    """Load a config or exit 1 (invalid) / 2 (unreadable) with every error on its own line."""
    from ipvsync.config.build import load_config
    from ipvsync.config.load import ConfigInvalid

    try:
        return load_config(path)
    except ConfigInvalid as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        n = len(exc.errors)
        _err(f"{path}: {n} error{'s' if n != 1 else ''}; nothing was changed")
        sys.exit(EXIT_INVALID)
    except IsADirectoryError:
        _err(f"{path}: is a directory, expected a YAML file")
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        _err(f"cannot read {exc.filename or path}: {exc.strerror}")
        sys.exit(EXIT_USAGE)


def open_kernel() -> Any:
    from ipvsync.kernel.ipvs import IpvsUnavailable
    from ipvsync.kernel.system import Kernel

    try:
        return Kernel()
    except IpvsUnavailable as exc:
        _err(str(exc.strerror))
        sys.exit(EXIT_KERNEL)
    except PermissionError:
        _err("permission denied talking to the kernel: run as root (needs CAP_NET_ADMIN)")
        sys.exit(EXIT_KERNEL)
    except OSError as exc:
        _err(f"cannot talk to the kernel: {exc}")
        sys.exit(EXIT_KERNEL)


def _observe(kernel: Any, config: Any, state: Any) -> Any:
    try:
        # sync daemons are read when the config has some or ipvsync started some (to stop them)
        return kernel.observe(config.vip_interface, daemons=bool(config.sync_daemons) or bool(state.owned.daemons),
                              timeouts=config.ipvs_timeouts is not None)
    except PermissionError:
        _err("permission denied reading IPVS: run as root (needs CAP_NET_ADMIN)")
        sys.exit(EXIT_KERNEL)
    except OSError as exc:
        _err(f"cannot read the kernel's IPVS table: {exc}")
        sys.exit(EXIT_KERNEL)


def _state(args: argparse.Namespace) -> Any:
    from ipvsync.state import StateCorrupt, StateStore

    store = StateStore(args.state_dir)
    try:
        return store, store.load()
    except StateCorrupt as exc:
        _err(f"warning: {exc}")
        return store, store.load()
    except PermissionError:
        _err(f"cannot read the state dir {args.state_dir}: permission denied (run as root)")
        sys.exit(EXIT_KERNEL)


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args.config)
    n_rs = sum(len(s.real_servers) for s in config.services)
    files = f" in {len(config.sources)} files" if len(config.sources) > 1 else ""
    print(f"{args.config}: OK ({len(config.services)} services, {n_rs} real servers{files})")
    return EXIT_OK


def _daemon_view(args: argparse.Namespace) -> dict[str, Any] | None:
    """Ask a running daemon for its effective desired state (None when no daemon answers)."""
    try:
        from ipvsync.control import ControlUnavailable, request
    except ImportError:
        return None
    try:
        return request(args.runtime_dir, {"cmd": "plan"}, timeout=30)
    except ControlUnavailable:
        return None


def cmd_plan(args: argparse.Namespace) -> int:
    from ipvsync.desired import from_config
    from ipvsync.plan import plan

    config = load(args.config)
    if not args.configured:
        live = _daemon_view(args)
        if live is not None and live.get("config_file") == os.path.abspath(args.config):
            if args.json:
                print(json.dumps({"source": "daemon", "operations": live.get("operations", [])}, indent=1))
            else:
                print("# Effective weights from the running daemon (health checks and drains applied).")
                print(live.get("text", "No changes."))
            return EXIT_PENDING if args.exit_code and live.get("operations") else EXIT_OK
    _store, state = _state(args)
    with open_kernel() as kernel:
        observed = _observe(kernel, config, state)
    p = plan(from_config(config), observed, state.owned, sync_daemons=config.sync_daemons,
             timeouts=config.ipvs_timeouts)
    if args.json:
        print(json.dumps({"source": "configured", "operations": p.to_json()}, indent=1))
    else:
        if not args.configured:
            print("# No daemon is running for this config: showing configured weights (no health checks).")
        print(p.text())
    return EXIT_PENDING if args.exit_code and p else EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from ipvsync.apply import Applier, FaultSeam
    from ipvsync.desired import from_config
    from ipvsync.state import LockHeld, RuntimeLock

    config = load(args.config)
    lock = RuntimeLock(args.runtime_dir)
    try:
        lock.acquire()
    except LockHeld as exc:
        _err(f"the ipvsync daemon is running (pid {exc.pid or '?'}) and owns the kernel state; "
             "use `systemctl reload ipvsync` (or `ipvsync reload`) instead")
        return EXIT_KERNEL
    except PermissionError:
        _err(f"cannot create the runtime lock in {args.runtime_dir}: permission denied (run as root)")
        return EXIT_KERNEL
    try:
        store, state = _state(args)
        with open_kernel() as kernel:
            observed = _observe(kernel, config, state)
            from ipvsync.preflight import preflight

            problems = preflight(config, observed)
            if problems:
                for p in problems:
                    print(p, file=sys.stderr)
                _err("apply refused before touching the kernel; nothing was changed")
                return EXIT_ROLLED_BACK
            applier = Applier(kernel, store, FaultSeam.from_env())
            try:
                result = applier.converge(from_config(config), observed, state, sync_daemons=config.sync_daemons,
                                          timeouts=config.ipvs_timeouts)
            except PermissionError as exc:
                _err(f"permission denied: {exc} (run as root)")
                return EXIT_KERNEL
        if args.verbose or not result.ok:
            for op in result.applied if result.ok else []:
                print(op)
        if result.ok:
            print(result.summary())
            for a in result.adopted:
                print(f"adopted (made by another writer, converged): {a}")
        else:
            print(result.summary(), file=sys.stderr)
        return result.exit_code
    finally:
        lock.release()


def cmd_export(args: argparse.Namespace) -> int:
    from ipvsync.export import export_yaml

    with open_kernel() as kernel:
        try:
            services = kernel.ipvs.dump()
        except OSError as exc:
            _err(f"cannot read the kernel's IPVS table: {exc}")
            return EXIT_KERNEL
    sys.stdout.write(export_yaml(services, args.vip_interface))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from ipvsync.config.schema import schema_json

    print(schema_json())
    return EXIT_OK


def _dispatch_external(name: str, args: argparse.Namespace) -> int:
    import importlib

    mod = importlib.import_module(f"ipvsync.commands.{name}")
    return int(mod.main(args))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, help=f"config file (default {DEFAULT_CONFIG})")
    common.add_argument("--state-dir", default=argparse.SUPPRESS, help=f"default {DEFAULT_STATE_DIR}")
    common.add_argument("--runtime-dir", default=argparse.SUPPRESS, help=f"default {DEFAULT_RUNTIME_DIR}")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(prog="ipvsync", parents=[common],
                                     description="Declarative IPVS virtual services, VIPs and health checks.")
    parser.add_argument("--version", action="version", version=f"ipvsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("check", parents=[common], help="validate the config (no root, no kernel)")
    p = sub.add_parser("plan", parents=[common], help="show the operations apply would run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--exit-code", action="store_true", help="exit 3 when changes are pending")
    p.add_argument("--configured", action="store_true", help="ignore a running daemon; plan configured weights")
    sub.add_parser("apply", parents=[common], help="converge the kernel once")
    p = sub.add_parser("export", parents=[common], help="print the live kernel as ipvsync YAML")
    p.add_argument("--vip-interface", default="ipvsync0")
    sub.add_parser("schema", parents=[common], help="print the JSON Schema of the config")

    p = sub.add_parser("run", parents=[common], help="run the daemon")
    p.add_argument("--remove-on-exit", action="store_true", help="remove owned objects when stopping")
    sub.add_parser("reload", parents=[common], help="make the running daemon reload, wait for the result")
    p = sub.add_parser("status", parents=[common], help="show services, real servers and health")
    p.add_argument("service", nargs="?")
    p.add_argument("--json", action="store_true")
    for name in ("drain", "undrain"):
        p = sub.add_parser(name, parents=[common], help=f"{name} a real server (operator maintenance)")
        p.add_argument("service")
        p.add_argument("real_server")
    p = sub.add_parser("import-keepalived", parents=[common], help="convert keepalived.conf to ipvsync YAML")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="write the YAML here instead of stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    args.config = getattr(args, "config", DEFAULT_CONFIG)
    args.state_dir = getattr(args, "state_dir", DEFAULT_STATE_DIR)
    args.runtime_dir = getattr(args, "runtime_dir", DEFAULT_RUNTIME_DIR)
    args.verbose = getattr(args, "verbose", False)
    handlers = {"check": cmd_check, "plan": cmd_plan, "apply": cmd_apply, "export": cmd_export,
                "schema": cmd_schema}
    collecting = gc.isenabled()
    if args.command in handlers:
        # a one-shot command builds a large acyclic object graph (10,000 real servers) and exits:
        # the cyclic collector would only re-scan it (~10 % of a cold apply); nothing here leaks cycles
        gc.disable()
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        return _dispatch_external(args.command.replace("-", "_"), args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            _err(f"permission denied: {exc} (run as root)")
        else:
            _err(str(exc))
        return EXIT_KERNEL
    finally:
        if collecting:
            gc.enable()  # main() is also called in-process (tests, tools)

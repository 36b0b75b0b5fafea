"""Helpers for the foundation (issue 2) and atomic-apply (issue 3) kernel tests.

`Director` wraps the test's netns with a config file, a state dir and a persistent in-netns
worker: one Python process that imports ipvsync once (imports cost seconds in UML) and then runs
`ipvsync.cli.main(argv)` in-process per request, with stdout/stderr captured and environment
variables (IPVSYNC_TEST_FAULT...) set per request — the real CLI code path, without paying the
interpreter start-up for every command. `Director.cli_process()` runs the real `python -m ipvsync`
for the tests that prove the entry point itself.

Run as a script (`python helpers_foundation.py worker REPO`) it *is* that worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class CliResult:
    rc: int
    out: str
    err: str
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return f"rc={self.rc}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


class Director:
    """The director netns plus ipvsync's files for one test."""

    def __init__(self, netns: Any, base: Path, name: str = "d") -> None:
        self.netns = netns
        self.base = base / f"ipvsync-{name}"
        self.state_dir = self.base / "state"
        self.runtime_dir = self.base / "run"
        self.config = self.base / "ipvsync.yaml"
        self.base.mkdir(parents=True, exist_ok=True)
        self._worker: subprocess.Popen[str] | None = None

    # -- config ----------------------------------------------------------------------------------

    def write(self, text: str, path: Path | None = None) -> Path:
        path = path or self.config
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def line_of(self, needle: str, path: Path | None = None) -> int:
        """1-based line of the first line of the config containing `needle`."""
        for i, line in enumerate((path or self.config).read_text().splitlines(), 1):
            if needle in line:
                return i
        raise AssertionError(f"{needle!r} not in config")

    # -- running ipvsync -------------------------------------------------------------------------

    def _common(self) -> list[str]:
        return ["--state-dir", str(self.state_dir), "--runtime-dir", str(self.runtime_dir)]

    def _start_worker(self) -> subprocess.Popen[str]:
        env = _env()
        proc = self.netns.popen([sys.executable, str(Path(__file__).resolve()), "worker", str(REPO)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"ipvsync worker did not start: {line}{proc.stdout.read()}")
        return proc

    def _request(self, req: dict[str, Any]) -> dict[str, Any]:
        if self._worker is None or self._worker.poll() is not None:
            self._worker = self._start_worker()
        assert self._worker.stdin is not None and self._worker.stdout is not None
        self._worker.stdin.write(json.dumps(req) + "\n")
        self._worker.stdin.flush()
        line = self._worker.stdout.readline()
        try:
            return json.loads(line)
        except ValueError:
            raise RuntimeError(f"ipvsync worker died: {line}{self._worker.stdout.read()}") from None

    def cli(self, *args: str | os.PathLike[str], env: dict[str, str] | None = None,
            config: Path | None = None) -> CliResult:
        """`ipvsync --state-dir .. --runtime-dir .. CMD -c CONFIG ARGS` in-process in the worker."""
        cmd, *rest = [os.fspath(a) for a in args]
        argv = self._common() + [cmd, "-c", str(config or self.config), *rest]
        res = self._request({"argv": argv, "env": env or {}})
        return CliResult(res["rc"], res["out"], res["err"], res["t"])

    def apply(self, config: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        return self.cli("apply", config=config, env=env)

    def plan(self, *extra: str, config: Path | None = None) -> CliResult:
        return self.cli("plan", "--configured", *extra, config=config)

    def plan_ops(self, config: Path | None = None) -> list[dict[str, Any]]:
        res = self.plan("--json", config=config)
        assert res.rc == 0, res.text
        return json.loads(res.out)["operations"]

    def py(self, code: str) -> Any:
        """Run `code` in the worker (ipvsync importable, REPO on sys.path); returns its `result`."""
        res = self._request({"exec": textwrap.dedent(code)})
        if res.get("error"):
            raise AssertionError(f"in-netns python failed:\n{res['error']}")
        return res["result"]

    def cli_process(self, *args: str | os.PathLike[str], config: Path | None = None,
                    env: dict[str, str] | None = None) -> CliResult:
        """The real entry point in a fresh interpreter: `python -m ipvsync ...`."""
        cmd, *rest = [os.fspath(a) for a in args]
        full_env = _env()
        full_env.update(env or {})
        argv = [sys.executable, "-m", "ipvsync", *self._common(), cmd, "-c", str(config or self.config), *rest]
        proc = self.netns.run(argv, check=False, env=full_env, timeout=180)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def close(self) -> None:
        if self._worker is not None and self._worker.poll() is None:
            assert self._worker.stdin is not None
            self._worker.stdin.close()
            try:
                self._worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._worker.kill()
        self._worker = None

    # -- oracles ---------------------------------------------------------------------------------

    def save(self) -> str:
        """Sorted `ipvsadm -Sn`."""
        return self.netns.ipvsadm_save()

    def addrs(self) -> str:
        """`ip -br addr` of the whole namespace, one interface a line, addresses sorted.

        Sorted because a rollback restores the same set of addresses but re-adds them newest-first,
        and `ip` lists them in insertion order (irrelevant for /32 and /128 VIPs).
        """
        return _norm_addrs(self.netns.run(["ip", "-br", "addr"]).stdout)

    def snapshot(self) -> tuple[str, str]:
        """(sorted `ipvsadm -Sn`, normalised `ip -br addr`) from one process (cheap in UML)."""
        out = self.netns.run("ipvsadm -Sn && echo '#--' && ip -br addr").stdout
        ipvs, _, addrs = out.partition("#--\n")
        lines = sorted(ln for ln in ipvs.splitlines() if ln.strip())
        return "".join(ln + "\n" for ln in lines), _norm_addrs(addrs)

    def addr_detail(self, dev: str = "ipvsync0") -> dict[str, str]:
        """address/prefix -> the whole `ip -d addr show dev DEV` line describing it."""
        out = self.netns.run(["ip", "-d", "addr", "show", "dev", dev]).stdout
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] in ("inet", "inet6"):
                found[parts[1]] = line.strip()
        return found

    def owned(self) -> dict[str, Any]:
        path = self.state_dir / "state.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text())["owned"]

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def stats(self) -> dict[str, list[int]]:
        """`ipvsadm -Ln --stats`: 'SVC' or 'SVC -> RS' -> [conns, inpkts, outpkts, inbytes, outbytes]."""
        out = self.netns.run(["ipvsadm", "-Ln", "--stats"]).stdout
        stats: dict[str, list[int]] = {}
        svc = ""
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] in ("TCP", "UDP", "FWM", "SCTP"):
                svc = f"{parts[0]} {parts[1]}"
                stats[svc] = [_num(x) for x in parts[2:7]]
            elif parts and parts[0] == "->" and svc and len(parts) >= 7:
                stats[f"{svc} -> {parts[1]}"] = [_num(x) for x in parts[2:7]]
        return stats

    def stats_when(self, ok: Any, timeout: float = 20.0, settled: bool = False) -> dict[str, list[int]]:
        """Poll `stats()` until ok(stats): the kernel folds per-CPU counters in every 2 s (estimator).

        settled=True (a baseline to compare later counters with): also until they stay unchanged
        for more than one fold; a fold in the middle of the last connection counts it before its
        last packets, which the next fold adds."""
        deadline = time.monotonic() + timeout
        since: tuple[float, dict[str, list[int]]] | None = None  # when ok(st) began to hold, unchanged
        while True:
            st = self.stats()
            now = time.monotonic()
            try:
                good = ok(st)
            except KeyError:
                good = False
            if good and not settled:
                return st
            if good and since is not None and since[1] == st:
                if now - since[0] > 2.5:
                    return st
            else:
                since = (now, st) if good else None
            if now > deadline:
                raise AssertionError(f"counters never matched{' (settled)' if settled else ''}: {st}")
            time.sleep(0.25)


def _norm_addrs(text: str) -> str:
    lines = []
    for line in text.splitlines():
        parts = line.split()
        if parts:
            lines.append(" ".join(parts[:2] + sorted(parts[2:])))
    return "\n".join(sorted(lines)) + "\n"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _num(text: str) -> int:
    mult = {"K": 1000, "M": 1000**2, "G": 1000**3}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


# -- the worker (inside the netns) ---------------------------------------------------------------


def _worker_main(repo: str) -> None:
    import contextlib
    import io
    import time
    import traceback

    sys.path.insert(0, repo)
    import ipvsync.apply  # noqa: F401  (preload what apply/plan import lazily)
    import ipvsync.config.build  # noqa: F401
    import ipvsync.desired  # noqa: F401
    import ipvsync.kernel.system  # noqa: F401
    import ipvsync.preflight  # noqa: F401
    from ipvsync import cli

    with contextlib.suppress(ImportError):
        import pyroute2  # noqa: F401

    real_out = sys.stdout
    print("ready", file=real_out, flush=True)
    shared: dict[str, Any] = {}
    for line in sys.stdin:
        req = json.loads(line)
        if "exec" in req:
            ns: dict[str, Any] = {"shared": shared, "result": None}
            try:
                exec(compile(req["exec"], "<test>", "exec"), ns)
                reply = {"result": ns.get("result")}
            except BaseException:
                reply = {"error": traceback.format_exc()}
            print(json.dumps(reply, default=str), file=real_out, flush=True)
            continue
        saved = {k: os.environ.get(k) for k in req["env"]}
        os.environ.update(req["env"])
        out, err = io.StringIO(), io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(req["argv"])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                rc = -1
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reply = {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "t": time.monotonic() - t0}
        print(json.dumps(reply), file=real_out, flush=True)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker_main(sys.argv[2])

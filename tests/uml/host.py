"""Host side of the UML harness: boot shards, run the kernel tests inside, read their results."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

UML_DIR = Path(__file__).resolve().parent
INIT_SCRIPT = UML_DIR / "init.sh"
REPO_ROOT = UML_DIR.parent.parent

DEFAULT_KERNEL = "/usr/bin/linux.uml"
DEFAULT_SHARDS = 2
DEFAULT_TIMEOUT = 25 * 60
DEFAULT_MEM = "1G"
LOG_TAIL_LINES = 60


def env_int(name: str, default: int) -> int:
    """Integer from the environment, or `default` when unset/empty."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@dataclass(frozen=True)
class InnerResult:
    """One kernel test's outcome as reported by the pytest run inside UML."""

    outcome: str  # passed | failed | skipped | xfailed
    message: str = ""
    text: str = ""
    duration: float = 0.0


def mangle(nodeid: str) -> tuple[str, str]:
    """(classname, name) that pytest's junitxml writes for `nodeid` (fallback matching)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def _has_output(text: str | None) -> bool:
    """True if a junit system-out/err block holds more than pytest's empty section headers."""
    lines = (text or "").splitlines()
    return any(ln.strip() and not re.fullmatch(r"-+ Captured \w+ -+", ln.strip()) for ln in lines)


def parse_junit(path: Path) -> dict[str, InnerResult]:
    """Map nodeid (or mangled 'classname::name') -> InnerResult from a pytest junit file."""
    results: dict[str, InnerResult] = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        key = props.get("nodeid") or f"{case.get('classname')}::{case.get('name')}"
        outcome, message, parts = "passed", "", []
        for child in case:
            tag = child.tag
            if tag in ("failure", "error"):
                outcome = "failed"
                label = "FAILURE" if tag == "failure" else "ERROR (setup/teardown)"
                message = message or (child.get("message") or "")
                parts.append(f"--- inner {label}: {child.get('message') or ''}\n{child.text or ''}")
            elif tag == "skipped" and outcome == "passed":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                message = child.get("message") or ""
            elif tag in ("system-out", "system-err") and _has_output(child.text):
                parts.append(f"--- inner {tag}\n{child.text}")
        results[key] = InnerResult(outcome, message, "\n".join(parts), float(case.get("time") or 0.0))
    return results


def read_progress(path: Path) -> list[dict[str, str]]:
    """Progress records written by the inner run (survive a timeout, unlike junit)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Last `lines` non-empty lines of a text file (the UML console log)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no console log: {exc})"
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


@dataclass
class Shard:
    """One UML boot running a subset of the kernel tests."""

    index: int
    nodeids: list[str]
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    finished: bool = False
    error: str | None = None
    elapsed: float = 0.0
    results: dict[str, InnerResult] = field(default_factory=dict)

    @property
    def console(self) -> Path:
        return self.directory / "console.log"


class UmlRunner:
    """Runs kernel-marked tests in UML shards and hands back per-test results."""

    def __init__(self, nodeids: list[str], rootdir: Path, inifile: Path | None, tb: str | None) -> None:
        self.kernel = os.environ.get("IPVSYNC_UML_KERNEL", DEFAULT_KERNEL)
        self.timeout = env_int("IPVSYNC_UML_TIMEOUT", DEFAULT_TIMEOUT)
        self.mem = os.environ.get("IPVSYNC_UML_MEM", DEFAULT_MEM)
        self.rootdir = rootdir
        self.inifile = inifile
        self.tb = tb
        wanted = max(1, env_int("IPVSYNC_UML_SHARDS", DEFAULT_SHARDS))
        count = max(1, min(wanted, len(nodeids)))
        self.base = Path()  # set by start()
        self.shards = [Shard(i, nodeids[i::count], Path()) for i in range(count)]
        self.by_nodeid = {nid: s for s in self.shards for nid in s.nodeids}
        self.started = False

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Boot every shard in the background (idempotent)."""
        if self.started:
            return
        self.started = True
        logdir = os.environ.get("IPVSYNC_UML_LOGDIR")
        if logdir:
            Path(logdir).mkdir(parents=True, exist_ok=True)
        self.base = Path(tempfile.mkdtemp(prefix="ipvsync-uml-", dir=logdir or None))
        for shard in self.shards:
            shard.directory = self.base / f"shard-{shard.index}"
            self._boot(shard)

    def _boot(self, shard: Shard) -> None:
        shard.directory.mkdir(parents=True)
        shard.started = time.monotonic()
        if not (os.path.isfile(self.kernel) and os.access(self.kernel, os.X_OK)):
            shard.error = (
                f"UML kernel {self.kernel!r} not found or not executable "
                "(apt-get install user-mode-linux, or set IPVSYNC_UML_KERNEL)"
            )
            shard.finished = True
            return
        for p in (shard.directory, INIT_SCRIPT):
            if re.search(r"\s", str(p)):
                shard.error = f"path {p} contains whitespace; cannot pass it on the UML command line"
                shard.finished = True
                return
        self._write_run_script(shard)
        argv = [
            self.kernel,
            f"mem={self.mem}",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            f"init={INIT_SCRIPT}",
            "con=null",
            "con0=null,fd:2",
            "ssl=null",
            f"umid=ipvsync-{os.getpid()}-{shard.index}",
            f"uml_dir={shard.directory}",
            f"IPVSYNC_UML_SHARD_DIR={shard.directory}",
        ]
        (shard.directory / "cmdline").write_text(shlex.join(argv) + "\n")
        with open(shard.console, "wb") as log:
            try:
                shard.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=shard.directory,
                    start_new_session=True,
                )
            except OSError as exc:
                shard.error = f"cannot start UML: {exc}"
                shard.finished = True

    def _write_run_script(self, shard: Shard) -> None:
        pythonpath = [str(REPO_ROOT)]
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env = {
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "IPVSYNC_UML_PROGRESS": str(shard.directory / "progress.jsonl"),
        }
        for key, value in os.environ.items():
            if key.startswith("IPVSYNC_") and key not in env and key != "IPVSYNC_IN_UML":
                env[key] = value
            elif key == "PYTHONWARNINGS":
                env[key] = value
        argv = [
            sys.executable, "-m", "pytest",
            "-p", "no:cacheprovider",
            "-q", "-rfEs", "--color=no",
            "--continue-on-collection-errors",
            "-o", "junit_logging=all",
            f"--junitxml={shard.directory / 'junit.xml'}",
            f"--rootdir={self.rootdir}",
        ]
        if self.inifile is not None:
            argv += ["-c", str(self.inifile)]
        if self.tb:
            argv.append(f"--tb={self.tb}")
        argv += shard.nodeids
        lines = ["# generated by tests/uml/host.py", f"cd {shlex.quote(str(self.rootdir))} || exit 97"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        lines.append(shlex.join(argv))
        (shard.directory / "run.sh").write_text("\n".join(lines) + "\n")

    def shutdown(self) -> None:
        """Kill any shard still running (interrupted or aborted session)."""
        for shard in self.shards:
            if shard.proc is not None and shard.proc.poll() is None:
                self._kill(shard)

    @staticmethod
    def _kill(shard: Shard) -> None:
        assert shard.proc is not None
        try:
            os.killpg(shard.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            shard.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def cleanup(self) -> bool:
        """Remove the log dir when every shard and test succeeded (unless kept); True if removed."""
        if os.environ.get("IPVSYNC_UML_KEEP") or os.environ.get("IPVSYNC_UML_LOGDIR"):
            return False
        for shard in self.shards:
            if not shard.finished or shard.error:
                return False
            if any(r.outcome == "failed" for r in shard.results.values()):
                return False
            if len(shard.results) < len(shard.nodeids):
                return False
        shutil.rmtree(self.base, ignore_errors=True)
        return True

    # -- results ----------------------------------------------------------------------------------

    def wait(self, shard: Shard) -> None:
        """Block until `shard` finished or timed out, then collect its results."""
        if shard.finished:
            return
        self.start()
        if shard.proc is not None:
            remaining = self.timeout - (time.monotonic() - shard.started)
            try:
                shard.proc.wait(timeout=max(remaining, 0.1))
            except subprocess.TimeoutExpired:
                self._kill(shard)
                shard.error = f"UML shard timed out after {self.timeout}s (IPVSYNC_UML_TIMEOUT)"
        shard.elapsed = time.monotonic() - shard.started
        shard.finished = True
        junit = shard.directory / "junit.xml"
        if junit.exists():
            try:
                shard.results = parse_junit(junit)
            except ET.ParseError as exc:
                shard.error = shard.error or f"cannot parse {junit}: {exc}"
        rc_file = shard.directory / "rc"
        if shard.error is None and not rc_file.exists():
            code = shard.proc.returncode if shard.proc else None
            shard.error = f"UML exited (status {code}) before the test command finished (boot failure/crash)"

    def result(self, nodeid: str) -> tuple[InnerResult | None, Shard]:
        """Wait for the shard of `nodeid`; its result, or None if the inner run did not report it."""
        shard = self.by_nodeid[nodeid]
        self.wait(shard)
        res = shard.results.get(nodeid)
        if res is None:
            res = shard.results.get("::".join(mangle(nodeid)))
        return res, shard

    def missing_explanation(self, nodeid: str, shard: Shard) -> str:
        """Failure text for a kernel test the inner run did not report."""
        head = shard.error or "the test did not report a result inside UML (collection error?)"
        progress = read_progress(shard.directory / "progress.jsonl")
        started = [p["nodeid"] for p in progress if p.get("event") == "start"]
        was = "it was running when UML stopped" if started and started[-1] == nodeid else (
            "it had started" if nodeid in started else "it had not started"
        )
        return (
            f"{head}\n"
            f"kernel test {nodeid}: {was}.\n"
            f"UML shard {shard.index} ({len(shard.nodeids)} tests, {shard.elapsed:.1f}s); "
            f"console log: {shard.console}\n"
            f"--- last lines of the console log ---\n{tail(shard.console)}"
        )

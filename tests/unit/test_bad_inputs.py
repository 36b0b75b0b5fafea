"""Every file under tests/data/bad/ is rejected by `ipvsync check` with exit 1 and a precise message.

Each NAME.yaml has a sidecar NAME.expect: one expected error a line, `LINE: message fragment`. The
check must print exactly that many `FILE:LINE:COL: ...` error lines, each on the expected line and
containing its fragment, followed by the one summary line. No kernel is touched (host test); the
kernel-level "apply leaves the kernel unchanged" half is tests/kernel/test_foundation_bad_apply.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ipvsync import cli

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad"
CASES = sorted(p.stem for p in BAD.glob("*.yaml"))


def expectations(name: str) -> list[tuple[int, str]]:
    out = []
    for raw in (BAD / f"{name}.expect").read_text().splitlines():
        if raw.strip():
            line, _, fragment = raw.partition(": ")
            out.append((int(line), fragment))
    return out


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(["check", "-c", str(path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_at_least_forty_bad_inputs() -> None:
    assert len(CASES) >= 40
    assert sorted(p.stem for p in BAD.glob("*.expect")) == CASES, "every bad file needs a .expect sidecar"


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_rejected_precisely(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = BAD / f"{name}.yaml"
    code, out, err = run_check(path, capsys)
    assert code == cli.EXIT_INVALID, (code, out, err)
    assert out == ""
    lines = err.splitlines()
    assert lines[-1].startswith(f"ipvsync: {path}: ") and lines[-1].endswith("; nothing was changed"), err
    errors = lines[:-1]
    want = expectations(name)
    assert len(errors) == len(want), f"expected {len(want)} error line(s), got:\n{err}"
    for (line, fragment), got in zip(want, errors, strict=True):
        m = re.match(rf"^{re.escape(str(path))}:(\d+):(\d+): (.*)$", got)
        assert m, f"not FILE:LINE:COL: {got!r}"
        assert int(m.group(1)) == line, f"expected line {line}: {got}"
        assert int(m.group(2)) >= 1
        assert fragment in m.group(3), f"expected {fragment!r} in {got!r}"


def test_check_is_a_real_process_without_netlink(tmp_path: Path) -> None:
    """The installed entry point: exit 1, message on stderr, and `check` never imports the kernel layer."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['ipvsync', 'check', '-c', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('ipvsync', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    bad = sorted(m for m in sys.modules if m.startswith(('pyroute2', 'ipvsync.kernel')))\n"
        "    print('IMPORTED', bad)\n"
        "    raise\n"
    )
    path = BAD / "port-too-big.yaml"
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 1, proc
    assert f"{path}:8:34: services.web.real_servers[1].port: 70000 is greater than the maximum of 65535" \
        in proc.stderr
    assert "IMPORTED []" in proc.stdout


def test_unreadable_file_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_check(tmp_path / "missing.yaml", capsys)
    assert code == cli.EXIT_USAGE
    assert "cannot read" in err
    code, _out, err = run_check(tmp_path, capsys)
    assert code == cli.EXIT_USAGE
    assert "is a directory" in err


def test_one_shot_commands_run_without_the_cyclic_gc_and_restore_it(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import gc

    seen: list[bool] = []
    real = cli.cmd_check

    def spy(args: object) -> int:
        seen.append(gc.isenabled())
        return real(args)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "cmd_check", spy)
    assert gc.isenabled()
    code, _out, _err = run_check(REPO / "ipvsync.yaml.example", capsys)
    assert code == 0 and seen == [False]  # collector off while the command ran
    assert gc.isenabled()  # and on again for an in-process caller

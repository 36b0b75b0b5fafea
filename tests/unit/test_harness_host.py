"""Host-side tests of the UML harness: kernel test outcomes must reach the host faithfully."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS_DIR))

from uml.host import mangle, parse_junit  # noqa: E402

INNER_TESTS = '''
import pytest

pytestmark = pytest.mark.kernel


def test_passes(netns):
    assert netns.ipvsadm_save() == ""


def test_fails():
    assert 1 + 1 == 3, "inner-assertion-text"


def test_skips():
    pytest.skip("inner-skip-reason")
'''


def run_pytest(tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None,
               ) -> tuple[subprocess.CompletedProcess[str], dict[str, ET.Element]]:
    """Run an outer pytest on `source` in tmp_path; (process, {test name: junit testcase})."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["uml.plugin"]\n')
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    full_env = {k: v for k, v in os.environ.items() if k != "IPVSYNC_IN_UML"}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    full_env.update(env or {})
    junit = tmp_path / "outer.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}", *args],
        cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=900,
    )
    if not junit.exists():
        return proc, {}
    return proc, {c.get("name", ""): c for c in ET.parse(junit).getroot().iter("testcase")}


def test_missing_uml_kernel_fails_instead_of_skipping(tmp_path: Path) -> None:
    proc, cases = run_pytest(tmp_path, INNER_TESTS, env={"IPVSYNC_UML_KERNEL": str(tmp_path / "nope")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert set(cases) == {"test_passes", "test_fails", "test_skips"}
    for case in cases.values():
        failure = case.find("failure")
        assert failure is not None
        assert "not found or not executable" in (failure.text or "")


@pytest.mark.slow
def test_inner_outcomes_are_reported_on_the_host(tmp_path: Path) -> None:
    """Boots one UML: pass/fail/skip inside become pass/fail/skip outside; -k selects inside too."""
    proc, cases = run_pytest(tmp_path, INNER_TESTS, "-k", "not nothing_matches",
                             env={"IPVSYNC_UML_SHARDS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed, 1 skipped" in out, out
    failure = cases["test_fails"].find("failure")
    assert failure is not None and "inner-assertion-text" in (failure.text or "")
    assert "console log:" in (failure.text or "")
    skipped = cases["test_skips"].find("skipped")
    assert skipped is not None and "inner-skip-reason" in (skipped.get("message") or "")
    assert len(list(cases["test_passes"])) <= 1  # no failure/skip child (maybe properties)
    assert cases["test_passes"].find("failure") is None


def test_mangle_matches_junitxml_names() -> None:
    assert mangle("tests/kernel/test_a.py::TestX::test_y[a::b-1]") == (
        "tests.kernel.test_a.TestX", "test_y[a::b-1]"
    )


def test_parse_junit_outcomes(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="a" name="t1" time="1.5"><properties>'
        '<property name="nodeid" value="a.py::t1"/></properties></testcase>'
        '<testcase classname="a" name="t2"><failure message="boom">trace</failure>'
        '<system-out>------ Captured Out ------\nhello\n</system-out></testcase>'
        '<testcase classname="a" name="t3"><skipped type="pytest.skip" message="why"/></testcase>'
        '<testcase classname="a" name="t4"><skipped type="pytest.xfail" message="known"/></testcase>'
        '<testcase classname="a" name="t5"><error message="setup broke">tb</error></testcase>'
        '</testsuite></testsuites>'
    )
    res = parse_junit(xml)
    assert res["a.py::t1"].outcome == "passed" and res["a.py::t1"].duration == 1.5
    assert res["a::t2"].outcome == "failed" and "trace" in res["a::t2"].text and "hello" in res["a::t2"].text
    assert (res["a::t3"].outcome, res["a::t3"].message) == ("skipped", "why")
    assert res["a::t4"].outcome == "xfailed"
    assert res["a::t5"].outcome == "failed" and "setup broke" in res["a::t5"].text

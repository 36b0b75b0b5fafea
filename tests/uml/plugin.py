"""pytest plugin: run `kernel`-marked tests inside User-Mode Linux, report them on the host.

On the host every kernel item is replaced by a `UmlItem` with the same node id; the kernel tests
are split into shards (IPVSYNC_UML_SHARDS, default 2), each shard boots one UML that runs pytest
on its node ids with --junitxml, and each UmlItem reports its inner result. Inside UML
(IPVSYNC_IN_UML=1) the tests run directly and get the fixtures below.

Environment: IPVSYNC_UML_SHARDS, IPVSYNC_UML_TIMEOUT (s per shard, default 1500),
IPVSYNC_UML_KERNEL (default /usr/bin/linux.uml), IPVSYNC_UML_MEM (default 1G),
IPVSYNC_UML_LOGDIR (where shard dirs/console logs go; kept), IPVSYNC_UML_KEEP (keep logs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .host import InnerResult, UmlRunner
from .netns import IpvsyncCmd, Netns, Topology, build_topology, in_uml
from .netns import module_tree_without as _module_tree_without

__all__ = [
    "pytest_configure", "pytest_collection_modifyitems", "pytest_runtestloop", "pytest_sessionfinish",
    "pytest_terminal_summary", "pytest_runtest_logstart", "pytest_runtest_logreport",
    "netns", "make_netns", "topology", "module_tree_without", "ipvsync_cmd",
]

KERNEL_TESTS_DIR = Path(__file__).resolve().parent.parent / "kernel"
RUNNER_KEY = pytest.StashKey[UmlRunner]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: runs inside User-Mode Linux against a real IPVS kernel")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    if not in_uml() and not config.pluginmanager.has_plugin("ipvsync-uml-replacer"):
        config.pluginmanager.register(_Replacer(), "ipvsync-uml-replacer")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/kernel/ is a kernel test, marked or not (before -m filtering)."""
    for item in items:
        if item.path.is_relative_to(KERNEL_TESTS_DIR) and item.get_closest_marker("kernel") is None:
            item.add_marker(pytest.mark.kernel)
    if in_uml():
        for item in items:
            item.user_properties.append(("nodeid", item.nodeid))


class _Replacer:
    """Separate plugin object so it can hold a second, trylast collection_modifyitems hook."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        _replace_kernel_items(config, items)


def _replace_kernel_items(config: pytest.Config, items: list[pytest.Item]) -> None:
    """After -k/-m/--deselect: swap each kernel item for a UmlItem reporting the UML result."""
    kernel = [i for i in items if i.get_closest_marker("kernel") is not None]
    if not kernel:
        return
    runner = UmlRunner(
        [i.nodeid for i in kernel],
        rootdir=Path(config.rootpath),
        inifile=Path(config.inipath) if config.inipath else None,
        tb=config.getoption("tbstyle", None) if config.getoption("tbstyle", "auto") != "auto" else None,
    )
    config.stash[RUNNER_KEY] = runner
    for pos, item in enumerate(items):
        if item in kernel:
            items[pos] = UmlItem.from_parent_item(item, runner)


class InnerFailure(Exception):
    """A kernel test failed (or could not run) inside UML."""


class UmlItem(pytest.Item):
    """Host-side stand-in for a kernel test: its outcome is the inner (UML) outcome."""

    def __init__(self, *, runner: UmlRunner, location: tuple[str, int | None, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runner = runner
        self._location = location

    @classmethod
    def from_parent_item(cls, item: pytest.Item, runner: UmlRunner) -> UmlItem:
        assert item.parent is not None
        new = cls.from_parent(item.parent, name=item.name, runner=runner, location=item.location)
        new.own_markers.extend(item.own_markers)
        new.keywords.update(dict(item.keywords))
        return new

    def runtest(self) -> None:
        result, shard = self.runner.result(self.nodeid)
        if result is None:
            raise InnerFailure(self.runner.missing_explanation(self.nodeid, shard))
        self.user_properties.append(("uml_duration", f"{result.duration:.3f}"))
        self._report(result, shard.index, str(shard.console))

    @staticmethod
    def _report(result: InnerResult, shard: int, console: str) -> None:
        if result.outcome == "skipped":
            pytest.skip(f"[in UML] {result.message}")
        if result.outcome == "xfailed":
            pytest.xfail(f"[in UML] {result.message}")
        if result.outcome == "failed":
            raise InnerFailure(
                f"kernel test failed inside UML (shard {shard}, console log: {console})\n{result.text}"
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, InnerFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        path, lineno, name = self._location
        return Path(self.config.rootpath, path), lineno, name


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Boot the UML shards in the background as the test loop starts (overlaps host tests)."""
    runner = session.config.stash.get(RUNNER_KEY, None)
    if runner is None or session.config.option.collectonly:
        return
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        return
    runner.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    runner = session.config.stash.get(RUNNER_KEY, None)
    if runner is not None:
        runner.shutdown()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    runner = config.stash.get(RUNNER_KEY, None)
    if runner is None or not runner.started:
        return
    times = ", ".join(f"shard {s.index}: {len(s.nodeids)} tests {s.elapsed:.0f}s" for s in runner.shards)
    removed = runner.cleanup()
    where = "" if removed else f"; logs kept in {runner.base}"
    terminalreporter.write_line(f"UML: {times}{where}")


# -- inside UML: progress records (survive a timeout) ----------------------------------------------


def _progress(record: dict[str, str]) -> None:
    path = os.environ.get("IPVSYNC_UML_PROGRESS")
    if path and in_uml():
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _progress({"event": "start", "nodeid": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _progress({"event": report.when or "", "nodeid": report.nodeid, "outcome": report.outcome})


# -- fixtures (kernel tests) ---------------------------------------------------------------------


def _require_uml(request: pytest.FixtureRequest) -> None:
    if not in_uml():
        pytest.fail(f"{request.fixturename} needs a kernel test: mark it @pytest.mark.kernel", pytrace=False)


@pytest.fixture
def netns(request: pytest.FixtureRequest) -> Iterator[Netns]:
    """A fresh network namespace (empty IPVS table, lo up); deleted with its processes afterwards."""
    _require_uml(request)
    ns = Netns.create()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def make_netns(request: pytest.FixtureRequest) -> Iterator[Callable[[], Netns]]:
    """Factory for extra fresh namespaces, all deleted after the test."""
    _require_uml(request)
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns.create())
        return made[-1]

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.delete()


@pytest.fixture
def topology(netns: Netns) -> Iterator[Callable[..., Topology]]:
    """Factory: topology(n_servers=2, n_clients=1) -> Topology with `netns` as the director."""
    built: list[Topology] = []

    def make(n_servers: int = 2, n_clients: int = 1) -> Topology:
        if built:
            raise RuntimeError("one topology per test (the director is the test's netns)")
        built.append(build_topology(netns, n_servers, n_clients))
        return built[-1]

    try:
        yield make
    finally:
        for topo in built:
            for ns in topo.namespaces:
                ns.delete()


@pytest.fixture
def module_tree_without(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """The `module_tree_without(name)` context manager (also importable from uml.netns)."""
    _require_uml(request)
    return _module_tree_without


@pytest.fixture
def ipvsync_cmd(request: pytest.FixtureRequest, tmp_path: Path) -> IpvsyncCmd:
    """ipvsync_cmd(netns, *args, check=False, input=None, timeout=120) -> CompletedProcess."""
    _require_uml(request)
    return IpvsyncCmd(tmp_path)

"""The daemon's change detection on config sources: inotify-driven checks trust an unchanged stat
(inode, size, mtime, ctime) and re-read only the files that changed; a change is never missed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ipvsync.daemon import Daemon

SETTLE_PAST = 0.06
MAIN = "version: 1\ninclude: [conf.d/*.yaml]\nservices: {}\n"


def part(i: int, weight: int = 1) -> str:
    return (f"services:\n  s{i}:\n    vip: 192.0.2.{i + 1}\n    port: 80\n    real_servers:\n"
            f"      - {{address: 198.51.100.{i + 1}, weight: {weight}}}\n")


def make_daemon(tmp_path: Path) -> tuple[Daemon, Path]:
    (tmp_path / "conf.d").mkdir()
    main = tmp_path / "ipvsync.yaml"
    main.write_text(MAIN)
    for i in range(3):
        (tmp_path / "conf.d" / f"p{i}.yaml").write_text(part(i))
    d = Daemon(str(main), str(tmp_path / "state"), str(tmp_path / "run"))
    d.raw_digest = d.compute_raw_digest()
    d.config = d.read_config()
    d.raw_digest = d.compute_raw_digest()  # now with the include list known
    d._read_stats = d._file_stats  # as _reload records after a good load
    return d, tmp_path


def weight(d: Daemon, name: str) -> int:
    svc = d.config.service(name)
    assert svc is not None
    return svc.real_servers[0].attrs.weight


def test_only_the_changed_include_is_read_again(tmp_path: Path) -> None:
    d, root = make_daemon(tmp_path)
    before = d.raw_digest
    tmp = root / "conf.d" / ".p1.tmp"
    tmp.write_text(part(1, weight=7))
    os.replace(tmp, root / "conf.d" / "p1.yaml")
    digest = d.compute_raw_digest(trust_stat=True)
    assert digest != before
    assert str(root / "conf.d" / "p1.yaml") not in d._unread
    assert str(root / "conf.d" / "p0.yaml") in d._unread and str(root / "ipvsync.yaml") in d._unread
    d.config = d.read_config(trust_stat=True)
    assert weight(d, "s1") == 7 and weight(d, "s0") == 1


def test_same_size_same_mtime_rewrite_is_still_seen(tmp_path: Path) -> None:
    """cp -p style: content changes, size and mtime kept; ctime (which nobody can set) moves."""
    d, root = make_daemon(tmp_path)
    f = root / "conf.d" / "p2.yaml"
    st = os.stat(f)
    f.write_text(part(2, weight=9))  # same length as weight 1
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size
    digest = d.compute_raw_digest(trust_stat=True)
    assert digest != d.raw_digest
    d.config = d.read_config(trust_stat=True)
    assert weight(d, "s2") == 9


def test_untrusted_check_reads_everything(tmp_path: Path) -> None:
    d, _root = make_daemon(tmp_path)
    d.compute_raw_digest(trust_stat=False)
    assert d._unread == set()


def test_an_include_moved_away_is_waited_for(tmp_path: Path) -> None:
    d, root = make_daemon(tmp_path)
    f = root / "conf.d" / "p0.yaml"
    os.replace(f, root / "conf.d" / "p0.yaml~")  # vim's backup rename
    d.file_event("moved", str(f))
    assert d._source_missing()
    (root / "conf.d" / "p0.yaml").write_text(part(0, weight=4))
    assert not d._source_missing()


def test_plain_health_shortcut_equals_evaluate(tmp_path: Path) -> None:
    """All up, nothing drained: desired_for skips evaluate(); the result must be evaluate()'s."""
    from ipvsync.health.effective import QuorumState, evaluate
    from ipvsync.health.monitor import HealthMonitor
    from ipvsync.plan import Observed

    d, _root = make_daemon(tmp_path)
    d.health = HealthMonitor(lambda: None)
    d.health.update(d.config)
    got, declared = d.desired_for(d.config, Observed(services={}), 0.0, commit=False)
    want, _q = evaluate(declared, d.config, d.health.verdicts(), set(), {}, 0.0, QuorumState(),
                        d.health.first_round_done)
    assert got == want


def test_cached_reload_equals_a_fresh_load(tmp_path: Path) -> None:
    """Unchanged includes are taken whole from the last load: the Config must equal a fresh load,
    and a duplicate introduced by the edited file must be reported as a fresh load reports it."""
    from ipvsync.config.build import load_config
    from ipvsync.config.load import ConfigInvalid

    d, root = make_daemon(tmp_path)
    (root / "conf.d" / "p1.yaml").write_text(part(1, weight=5))
    d.config = d.read_config()
    fresh = load_config(str(root / "ipvsync.yaml"))
    assert d.config.services == fresh.services
    assert [s.name for s in d.config.services] == [s.name for s in fresh.services]
    (root / "conf.d" / "p2.yaml").write_text(part(0))  # s0 again: duplicate name and key
    errors = []
    for loader in (d.read_config, lambda: load_config(str(root / "ipvsync.yaml"))):
        try:
            loader()
        except ConfigInvalid as exc:
            errors.append([str(e) for e in exc.errors])
    assert len(errors) == 2 and errors[0] == errors[1] and errors[0]


def test_in_place_rewrite_is_read_after_it_is_quiet(tmp_path: Path) -> None:
    """A write into the same inode (cat >, cp) is read only once quiet; a check right after the
    change must not take the old parse on trust (the stat moved since the last load)."""
    import asyncio

    d, root = make_daemon(tmp_path)
    d._read_inodes = {f: key[0] for f, (key, _d) in d._file_stats.items()}
    f = root / "conf.d" / "p0.yaml"
    with open(f, "r+") as fh:  # same inode
        fh.truncate(0)
        fh.write(part(0, weight=6))
    d.compute_raw_digest(trust_stat=True)
    # right after the check that saw the write, as the daemon asks (before it, the answer came from
    # make_daemon's stats, true only if all of make_daemon took less than the 50 ms window)
    assert d._written_in_place_now()
    d.compute_raw_digest(trust_stat=True)  # a second check (the quiet wait) must still re-read it
    assert str(f) not in d._unread
    d.config = d.read_config(trust_stat=True)
    assert weight(d, "s0") == 6
    asyncio.run(asyncio.sleep(0.06))
    assert not d._written_in_place_now()


def test_a_fifo_in_place_of_the_config_never_blocks_the_check(tmp_path: Path) -> None:
    import threading

    cfg = tmp_path / "ipvsync.yaml"
    os.mkfifo(cfg)
    d = Daemon(str(cfg), str(tmp_path / "state"), str(tmp_path / "run"))
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(d.compute_raw_digest()), daemon=True)
    t.start()
    t.join(5)
    assert done, "compute_raw_digest blocked on a FIFO"


# -- in-place saves seen half done: the check a file event wakes waits for the writer ----------------


def recording_reload(d: Daemon) -> list[object]:
    """Replace the daemon's reload (lock held) by what it does up to the kernel: read the sources
    the digest saw. Each call records the Config read, or the ConfigInvalid a real reload would log
    as a rejection."""
    from ipvsync.config.load import ConfigInvalid

    calls: list[object] = []

    def reload(why: str, digest: str | None = None, trust_stat: bool = False) -> None:
        d.raw_digest = digest or d.compute_raw_digest()
        try:
            d.config = d.read_config(trust_stat and digest is not None)
        except ConfigInvalid as exc:
            calls.append(exc)
            return
        d._read_stats = d._file_stats
        calls.append(d.config)

    d._reload_locked = reload  # type: ignore[method-assign,assignment]
    return calls


def test_truncate_then_a_late_write_is_not_judged_empty(tmp_path: Path) -> None:
    """A writer truncates a source (open O_TRUNC, as cp and `>` do) and writes 300 ms later (a
    loaded machine); a check woken meanwhile (the truncate's event, a late one, the poll) must not
    read the empty file and reject it: it waits for the content and applies it."""
    import asyncio

    d, root = make_daemon(tmp_path)
    d._read_inodes = {f: key[0] for f, (key, _d) in d._file_stats.items()}
    calls = recording_reload(d)
    f = root / "conf.d" / "p0.yaml"

    async def main() -> None:
        fd = os.open(f, os.O_WRONLY | os.O_TRUNC)

        async def writer() -> None:
            await asyncio.sleep(0.3)
            os.write(fd, part(0, weight=6).encode())
            os.close(fd)

        d.kick("file")
        await asyncio.gather(d.tick(), writer())

    asyncio.run(main())
    assert len(calls) == 1 and not isinstance(calls[0], Exception), calls
    assert weight(d, "s0") == 6


def test_truncated_main_file_written_later_is_applied(tmp_path: Path) -> None:
    """The same with the main file and an inotify IN_MODIFY (the truncate) that has no close yet."""
    import asyncio

    d, root = make_daemon(tmp_path)
    d._read_inodes = {f: key[0] for f, (key, _d) in d._file_stats.items()}
    calls = recording_reload(d)
    main_file = root / "ipvsync.yaml"
    new = MAIN.replace("services: {}", "services: {}\nreconcile_interval: 7")

    async def main() -> None:
        fd = os.open(main_file, os.O_WRONLY | os.O_TRUNC)
        d.file_event("modified", str(main_file))

        async def writer() -> None:
            await asyncio.sleep(0.3)
            os.write(fd, new.encode())
            os.close(fd)
            await asyncio.sleep(0.2)  # the IN_CLOSE_WRITE comes late (a loaded machine)
            d.file_event("closed", str(main_file))

        d.writing.clear()  # as loop() leaves it: the check runs with the writer's close still to come
        await asyncio.gather(d.tick(), writer())

    asyncio.run(main())
    assert len(calls) == 1 and not isinstance(calls[0], Exception), calls
    assert d.config is not None and d.config.reconcile_interval == 7


def test_a_check_that_waited_for_an_explicit_reload_looks_again(tmp_path: Path) -> None:
    """A check woken by a rename save finds `ipvsync reload` (or SIGHUP) running; by the time it
    gets the reload lock the file is being rewritten in place (truncated, written 300 ms later).
    It must not read it with the digest it took before the wait: it looks again and waits."""
    import asyncio
    import time

    d, root = make_daemon(tmp_path)
    d._read_inodes = {f: key[0] for f, (key, _d) in d._file_stats.items()}
    time.sleep(SETTLE_PAST)
    calls = recording_reload(d)
    f = root / "conf.d" / "p0.yaml"
    tmp = root / "conf.d" / ".p0.tmp"
    tmp.write_text(part(0, weight=2))
    os.replace(tmp, f)

    async def main() -> None:
        async def explicit_reload() -> None:
            async with d.reload_lock:
                await asyncio.sleep(0.2)

        async def writer() -> None:
            await asyncio.sleep(0.1)
            fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
            await asyncio.sleep(0.3)
            os.write(fd, part(0, weight=8).encode())
            os.close(fd)

        d.kick("file")
        await asyncio.gather(explicit_reload(), d.tick(), writer())

    asyncio.run(main())
    assert calls and not any(isinstance(c, Exception) for c in calls), calls
    assert weight(d, "s0") == 8


def test_a_file_emptied_for_good_is_still_judged(tmp_path: Path, monkeypatch: Any) -> None:
    """An emptied source that stays empty is judged (and refused) once it has been quiet for the
    write wait: not at once, not never."""
    import asyncio
    import time

    from ipvsync import daemon as daemon_mod
    from ipvsync.config.load import ConfigInvalid

    monkeypatch.setattr(daemon_mod, "WRITE_WAIT", 0.4)
    d, root = make_daemon(tmp_path)
    d._read_inodes = {f: key[0] for f, (key, _d) in d._file_stats.items()}
    calls = recording_reload(d)
    (root / "ipvsync.yaml").write_text("")
    d.kick("file")
    t0 = time.monotonic()
    asyncio.run(d.tick())
    took = time.monotonic() - t0
    assert len(calls) == 1 and isinstance(calls[0], ConfigInvalid), calls
    assert "the file is empty" in str(calls[0].errors[0])
    assert 0.3 <= took < 2.0, took


def test_a_rename_save_is_acted_on_at_once(tmp_path: Path, monkeypatch: Any) -> None:
    """A save by rename is complete when seen: no settle wait at all."""
    import asyncio
    import time

    d, root = make_daemon(tmp_path)
    d._read_inodes = {f: key[0] for f, (key, _d) in d._file_stats.items()}
    calls = recording_reload(d)
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *a: Any, **kw: Any) -> Any:
        sleeps.append(delay)
        return await real_sleep(delay, *a, **kw)

    time.sleep(SETTLE_PAST)  # make_daemon's own writes are older than the in-place settle window
    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    tmp = root / "conf.d" / ".p1.tmp"
    tmp.write_text(part(1, weight=3))
    os.replace(tmp, root / "conf.d" / "p1.yaml")
    d.file_event("moved", str(tmp))  # watchdog's view of a rename-over: moved, from the temp file
    asyncio.run(d.tick())
    assert sleeps == [] and len(calls) == 1 and weight(d, "s1") == 3


def test_an_explicit_reload_of_an_empty_file_answers_at_once(tmp_path: Path) -> None:
    """`ipvsync reload` and SIGHUP judge the file as it is: no write wait."""
    import asyncio
    import time

    d, root = make_daemon(tmp_path)
    (root / "ipvsync.yaml").write_text("")
    t0 = time.monotonic()
    outcome = asyncio.run(d.reload("ipvsync reload"))
    assert outcome.code == 1 and "the file is empty" in outcome.errors[0]
    assert time.monotonic() - t0 < 0.5


def test_without_close_events_a_modified_file_is_not_held_as_written(tmp_path: Path) -> None:
    """A watchdog without FileClosedEvent never says a writer closed the file: a modified source is
    then not held as being written (that would cost WRITE_WAIT per save); a moved one still vanishes."""
    d, root = make_daemon(tmp_path)
    d.close_events = False
    d.file_event("modified", str(root / "ipvsync.yaml"))
    assert d.writing == set()
    d.file_event("moved", str(root / "conf.d" / "p0.yaml"))
    assert str(root / "conf.d" / "p0.yaml") in d.vanished
    d.close_events = True
    d.file_event("modified", str(root / "ipvsync.yaml"))
    assert d.writing == {str(root / "ipvsync.yaml")}

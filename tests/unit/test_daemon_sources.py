"""The daemon's change detection on config sources: inotify-driven checks trust an unchanged stat
(inode, size, mtime, ctime) and re-read only the files that changed; a change is never missed."""

from __future__ import annotations

import os
from pathlib import Path

from ipvsync.daemon import Daemon

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

"""Issue 4, proofs 3 and 4: config files as editors and people really change them.

3. Each editor-style save (truncate + write, real `sed -i`, real `cp`, temp + rename, real vim, a
   Kubernetes `..data` symlink swap) causes exactly one reload; identical content (touch, the same
   bytes rewritten, an identical symlink swap) causes none.
4. An invalid edit leaves the kernel alone and the daemon running, `ipvsync reload` exits 1 with
   FILE:LINE errors, fixing the file applies it; an emptied file is refused (deletion guard) unless
   `allow_empty: true`.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import pytest
from daemon_helpers import daemon_fixture, ipvs_weights, vips, wait_for

pytestmark = pytest.mark.kernel
make_daemon = daemon_fixture()

QUIET = 1.0  # seconds without a second reload after a save (the daemon settles bursts in 50 ms)


def one_service(weight: int) -> str:
    return f"""\
version: 1
services:
  a:
    vip: 192.0.2.10
    port: 80
    scheduler: wrr
    real_servers:
      - {{address: 198.51.100.2, port: 80, weight: {weight}}}
  b:
    vip: 192.0.2.20
    port: 80
    real_servers: [198.51.100.3:80]
"""


def a_weight(netns: Any) -> int:
    return ipvs_weights(netns)["t 192.0.2.10:80"]["198.51.100.2:80"]


def test_editor_saves_reload_exactly_once_identical_content_never(netns: Any, make_daemon: Any) -> None:
    d = make_daemon()
    d.write(one_service(1))
    d.start()
    conf = d.config
    n = 0
    timings: dict[str, float] = {}

    def expect_one(weight: int, how: str) -> None:
        nonlocal n
        n += 1
        timings[how] = round(d.wait_reloads(n, 20), 3)
        time.sleep(QUIET)
        assert d.reloads() == n, f"{how}: expected exactly one reload\n{d.log()}"
        assert d.rejections() == 0, f"{how}: a half-written file was read\n{d.log()}"
        assert a_weight(netns) == weight, how

    def expect_none(how: str) -> None:
        time.sleep(QUIET)
        assert d.reloads() == n, f"{how}: identical content must not reload\n{d.log()}"
        assert d.rejections() == 0, d.log()

    # -- saves that change the content: one reload each
    t0 = time.monotonic()
    d.write(one_service(2), how="inplace")  # open(O_TRUNC) + write, like `cat >`
    expect_one(2, "truncate+write")
    netns.run(["sed", "-i", "s/weight: 2/weight: 3/", str(conf)])  # GNU sed: temp file + rename
    expect_one(3, "sed -i")
    src = d.base / "new.yaml"
    src.write_text(one_service(4))
    netns.run(["cp", str(src), str(conf)])  # cp onto an existing file: truncate + write
    expect_one(4, "cp")
    d.write(one_service(5), how="rename")  # temp + mv
    expect_one(5, "temp+mv")
    # vim itself (swap file in the same directory, writebackup: original renamed to a backup first)
    netns.run(["vim", "-u", "NONE", "-i", "NONE", "-N", "-es", "-c", "%s/weight: 5/weight: 6/", "-c", "wq",
               str(conf)])
    expect_one(6, "vim")
    assert not any(p.name.endswith((".swp", "~")) for p in d.confdir.iterdir())
    # a slow in-place writer (a big `cp`, chunk by chunk) whose first chunk alone is a valid config
    # without service b: the daemon must read the file once it is closed, not in between
    text = one_service(7).encode()
    cut = text.index(b"  b:")
    seen = len(d.log())
    fd = os.open(conf, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text[:cut])
        time.sleep(0.5)
        os.write(fd, text[cut:])
    finally:
        os.close(fd)
    expect_one(7, "slow in-place write")
    assert "t 192.0.2.20:80" in ipvs_weights(netns)
    assert "192.0.2.20" not in d.log()[seen:], f"service b was touched while the file was half written\n{d.log()}"
    netns.run(["sed", "-i", "s/weight: 7/weight: 6/", str(conf)])
    expect_one(6, "sed -i back")

    # -- identical content: no reload
    os.utime(conf)  # touch
    expect_none("touch")
    d.write(one_service(6), how="inplace")
    expect_none("same bytes in place")
    d.write(one_service(6), how="rename")
    expect_none("same bytes renamed over")
    netns.run(["sed", "-i", "s/weight: 6/weight: 6/", str(conf)])
    expect_none("sed -i no-op")

    # -- Kubernetes ConfigMap layout: ipvsync.yaml -> ..data/ipvsync.yaml, ..data -> ..<version>/
    def version_dir(tag: str, weight: int) -> str:
        vdir = d.confdir / f"..2026_{tag}"
        vdir.mkdir()
        (vdir / "ipvsync.yaml").write_text(one_service(weight))
        return vdir.name

    def swap(target: str) -> None:
        tmp = d.confdir / "..data_tmp"
        tmp.symlink_to(target)
        os.replace(tmp, d.confdir / "..data")  # the atomic swap kubelet does

    v1 = version_dir("v1", 6)
    swap(v1)
    link = d.confdir / "ipvsync.yaml.link"
    link.symlink_to("..data/ipvsync.yaml")
    os.replace(link, conf)  # regular file -> symlink, same content
    expect_none("switch to the ..data layout (same content)")
    v2 = version_dir("v2", 7)
    swap(v2)
    shutil.rmtree(d.confdir / v1)
    expect_one(7, "..data symlink swap")
    v3 = version_dir("v3", 7)
    swap(v3)
    shutil.rmtree(d.confdir / v2)
    expect_none("..data swap to identical content")
    v4 = version_dir("v4", 8)
    swap(v4)
    shutil.rmtree(d.confdir / v3)
    expect_one(8, "second ..data symlink swap")
    assert d.alive()
    print(f"write -> 'config reloaded' seconds: {timings}; whole sequence {time.monotonic() - t0:.1f} s; "
          f"daemon start {d.start_seconds:.1f} s")


TWO = """\
version: 1
defaults:
  scheduler: rr
services:
  a:
    vip: 192.0.2.10
    port: 80
    real_servers: [198.51.100.2:80, 198.51.100.3:80]
  b:
    vip: 192.0.2.20
    port: 80
    real_servers:
      - {address: 198.51.100.2, port: 80, weight: WEIGHT}
"""


def test_invalid_edit_rejected_kernel_unchanged_then_fixed_and_deletion_guard(netns: Any, make_daemon: Any) -> None:
    d = make_daemon()
    d.write(TWO.replace("WEIGHT", "1"))
    d.start()
    before = (netns.ipvsadm_save(), vips(netns))
    assert before[1] == {"192.0.2.10", "192.0.2.20"}

    # an invalid edit (two errors): rejected, nothing touched, daemon alive
    d.write(TWO.replace("WEIGHT", "-3").replace("scheduler: rr", "schedular: rr"))
    bad_lines = (d.line_of("schedular"), d.line_of("weight: -3"))
    wait_for(lambda: d.rejections() >= 1, 20, what="the rejection")
    assert d.alive()
    assert (netns.ipvsadm_save(), vips(netns)) == before
    proc = d.cli("reload")
    assert proc.returncode == 1, proc
    for line in bad_lines:
        assert f"{d.config}:{line}:" in proc.stderr, (line, proc.stderr)
    assert "keeping the last good config" in d.log()
    assert (netns.ipvsadm_save(), vips(netns)) == before
    assert d.request({"cmd": "ping"})["ok"]

    # fixing the file applies it (the watcher, no reload command)
    d.write(TWO.replace("WEIGHT", "3"))
    d.wait_reloads(1, 20)
    assert ipvs_weights(netns)["t 192.0.2.20:80"] == {"198.51.100.2:80": 3}
    good = (netns.ipvsadm_save(), vips(netns))

    # an emptied file (truncated to 0 bytes): refused, kernel unchanged
    rejected = d.rejections()
    d.write("", how="inplace")
    wait_for(lambda: d.rejections() > rejected, 20, what="the empty file to be refused")
    ans = d.reload()
    assert ans["code"] == 1, ans
    assert (netns.ipvsadm_save(), vips(netns)) == good

    # a valid config that removes every service: the deletion guard
    rejected = d.rejections()  # counted before the write: the daemon may refuse it at once
    d.write("version: 1\nservices: {}\n")
    wait_for(lambda: d.rejections() > rejected, 20, what="the deletion guard (file watch)")
    proc = d.cli("reload")
    assert proc.returncode == 1, proc
    assert "refusing to remove all 2 services" in proc.stderr and str(d.config) in proc.stderr, proc.stderr
    assert (netns.ipvsadm_save(), vips(netns)) == good
    assert d.alive()

    # allow_empty: true permits it; owned services and VIPs go (no connections: no drain)
    d.write("version: 1\nallow_empty: true\nservices: {}\n")
    ans = d.reload()
    assert ans["code"] == 0, ans
    wait_for(lambda: netns.ipvsadm_save() == "" and vips(netns) == set(), 10, what="everything removed")
    assert d.alive()

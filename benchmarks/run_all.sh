#!/bin/sh
# All three benchmark families, each in its own User-Mode-Linux boot, then the report.
#   benchmarks/run_all.sh [OUTDIR]            (default: a new dir under /tmp)
#   BENCH_REV=<commit> benchmarks/run_all.sh  (default HEAD; BENCH_WORKTREE=1 measures the working tree)
# Takes roughly 30-60 minutes in UML; results: OUTDIR/{apply,daemon,health}/*.json, OUTDIR/report.md
set -eu
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/ipvsync-bench-XXXXXX)}
mkdir -p "$out"
py=${PYTHON:-python3}
src="--rev ${BENCH_REV:-HEAD}"
[ -n "${BENCH_WORKTREE:-}" ] && src=--worktree
rc=0
$py benchmarks/uml_boot.py $src --out "$out/apply" -- python3 benchmarks/bench_apply.py --reps 3 --profile || rc=1
$py benchmarks/uml_boot.py $src --out "$out/daemon" -- python3 benchmarks/bench_daemon.py || rc=1
$py benchmarks/uml_boot.py $src --out "$out/health" -- python3 benchmarks/bench_health.py || rc=1
$py benchmarks/report.py "$out" > "$out/report.md"
echo "report: $out/report.md"
exit $rc

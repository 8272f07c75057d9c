#!/usr/bin/env bash
# Remount consistency: a random tree workload (several processes at once), drain the queue,
# unmount, mount again with an EMPTY state dir so that everything is read back from the remote,
# and compare manifests (type, size, mode, path, content hash of every entry; hard links, fifos,
# sockets and device nodes included, see tree_workload.py). Prints one line.
#
#   scripts/remount-check.sh [--quick] [--churn] [REMOTE]
#
# --churn runs the fsstress-like variant of the workload (directories renamed and removed
# mid-run, files held open across renames; tree_workload.py --churn, 300 ops per process).
# REMOTE defaults to a fresh local folder; pass s3://bucket/prefix (with the AWS_* variables
# set) to check a cloud remote. Uses target/debug/stratus unless STRATUS is set; SEED (default
# 7) picks the workload.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ops=400
churn=()
if [ "${1:-}" = --quick ]; then
    ops=120
    shift
fi
if [ "${1:-}" = --churn ]; then
    churn=(--churn)
    ops=300
    shift
fi
stratus=${STRATUS:-$here/target/debug/stratus}
work=$(mktemp -d)
remote=${1:-$work/remote}
mkdir -p "$work/remote" "$work/m1" "$work/m2"
keep=0
cleanup() {
    "$stratus" unmount "$work/m1" >/dev/null 2>&1 || true
    "$stratus" unmount "$work/m2" >/dev/null 2>&1 || true
    [ $keep -eq 1 ] || rm -rf "$work"
}
trap cleanup EXIT

"$stratus" mount "$remote" "$work/m1" --state-dir "$work/s1" --write-back 0.5 >/dev/null
python3 "$here/scripts/tree_workload.py" run "$work/m1" --procs 4 --ops "$ops" --seed "${SEED:-7}" "${churn[@]}"
python3 "$here/scripts/tree_workload.py" manifest "$work/m1" >"$work/before"
"$stratus" sync "$work/m1" --wait --timeout 300 >/dev/null
"$stratus" unmount "$work/m1" >/dev/null

"$stratus" mount "$remote" "$work/m2" --state-dir "$work/s2" >/dev/null
python3 "$here/scripts/tree_workload.py" manifest "$work/m2" >"$work/after"
entries=$(wc -l <"$work/before")
if diff -u "$work/before" "$work/after" >"$work/diff"; then
    echo "remount-check: ok ($entries entries identical after a remount with an empty state dir)"
else
    keep=1
    head -40 "$work/diff"
    echo "remount-check: FAILED ($(grep -c '^[-+][^-+]' "$work/diff") lines differ; $work/diff)"
    exit 1
fi

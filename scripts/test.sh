#!/usr/bin/env bash
# The whole test suite: installs what the tests need (fuse3, attr, moto, pjdfstest, fio, chromium,
# strace), then runs every unit and real-mount test (they start their own moto S3 server, Azurite
# and GCS test server on 127.0.0.1, some behind a fault-injecting proxy), and the quick conformance,
# remount-consistency and crash checks on a real mount.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Our tests speak plain HTTP to moto on 127.0.0.1; a CA bundle only gets in the way.
unset AWS_CA_BUNDLE || true

cargo test --all-targets -- --test-threads=4 "$@"

# Quick conformance suites on a stratus mount over a fresh local-folder remote. The remote folder's
# path ($work/r) is no longer than the mount's ($work/mnt): a local folder holds keys up to PATH_MAX
# minus its own path (docs/semantics.md), and pjdfstest's enametoolong_path cases make paths just
# under PATH_MAX inside the mount.
work=$(mktemp -d)
# pjdfstest switches to other users, who must be able to reach the mount (and to be let in:
# -o allow_other).
chmod 755 "$work"
mkdir -p "$work/r" "$work/mnt"
trap 'target/debug/stratus unmount "$work/mnt" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
target/debug/stratus mount "$work/r" "$work/mnt" --state-dir "$work/state" --write-back 0.2 -o allow_other
scripts/conformance.sh --quick "$work/mnt"
target/debug/stratus sync "$work/mnt" --wait --timeout 300
# After the queue drained, the remote folder holds exactly the tree the mount shows.
manifest() { python3 scripts/tree_workload.py manifest "$1"; }
if ! diff <(manifest "$work/mnt") <(manifest "$work/r") >/dev/null; then
    echo "conformance leftovers: the remote differs from the mount after the queue drained" >&2
    diff <(manifest "$work/mnt") <(manifest "$work/r") | head -20 >&2
    exit 1
fi
scripts/remount-check.sh --quick
scripts/crash.sh --quick
echo "suites: 4 passed, 0 failed (cargo test, conformance, remount-check, crash)"

#!/usr/bin/env bash
# Crash rounds: a write-heavy workload (scripts/crash_workload.py: two processes creating,
# appending to, rewriting, replacing and deleting files, each change fsync'd) logs every
# acknowledged write outside the mount; the daemon gets SIGKILL at a random moment; the same
# state dir is mounted again and must hold the last acknowledged version of every path (every
# round's, not only this one's); then the queue drains and the remote must hold the same.
# One line per round, then `crash: R rounds, A acknowledged writes, L losses` (L counts
# distinct paths); exits non-zero on any loss or on a queue that does not drain, and then
# keeps the work dir (logs, state dir, remote) for a look.
#
#   scripts/crash.sh [--quick] [ROUNDS] [REMOTE]
#
# ROUNDS defaults to 5 (--quick: 2 rounds, killed sooner). REMOTE defaults to a fresh local
# folder; pass s3://bucket/prefix (with the AWS_* variables set) for S3, where the remote is
# read back through a second mount with an empty state dir. Uses target/debug/stratus unless
# STRATUS is set (built if missing). SEED (printed) picks the kill delays and the workload's
# operations; where exactly a kill lands still depends on timing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
quick=0
if [ "${1:-}" = --quick ]; then
    quick=1
    shift
fi
rounds=${1:-$([ $quick -eq 1 ] && echo 2 || echo 5)}
seed=${SEED:-$(date +%s)}
stratus=${STRATUS:-$here/target/debug/stratus}
if [ ! -x "$stratus" ]; then
    (cd "$here" && cargo build --quiet)
fi
# Milliseconds the workload runs before the kill: uniform in [min, min + span).
if [ $quick -eq 1 ]; then
    kill_min=300 kill_span=1200
else
    kill_min=500 kill_span=3500
fi

work=$(mktemp -d)
remote=${2:-$work/remote}
state=$work/state
logs=$work/logs
mp=$work/mnt
check_mp=$work/check-mnt
mkdir -p "$work/remote" "$mp" "$check_mp" "$logs"
keep=0
cleanup() {
    [ -n "${wl_pid:-}" ] && kill -9 -- "-$wl_pid" 2>/dev/null || true
    "$stratus" unmount "$mp" >/dev/null 2>&1 || fusermount3 -uz "$mp" 2>/dev/null || true
    "$stratus" unmount "$check_mp" >/dev/null 2>&1 || true
    [ $keep -eq 1 ] || rm -rf "$work"
}
trap cleanup EXIT
# Anything unexpected: keep the evidence.
trap 'keep=1; echo "crash: failed; logs and state kept in $work" >&2' ERR

RANDOM=$seed
echo "crash: seed $seed, $rounds rounds, remote $remote"
acks=0
drain_failures=0
: >"$work/lost"
fail() {
    keep=1
    echo "crash: round $r: $*; logs and state kept in $work" >&2
}
# Paths a check reported (one "  lost: PATH: why" line each), recorded once per run.
record_losses() {
    sed -n 's/^  lost: \([^:]*\):.*/\1/p' <<<"$1" >>"$work/lost"
    sort -u -o "$work/lost" "$work/lost"
}

for r in $(seq 1 "$rounds"); do
    "$stratus" mount "$remote" "$mp" --state-dir "$state" --write-back 0.2 >/dev/null
    delay_ms=$((kill_min + (RANDOM * 32768 + RANDOM) % kill_span))
    python3 "$here/scripts/crash_workload.py" run "$mp" "$logs" --round "$r" --seed "$seed" &
    wl_pid=$!
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    pid=$(cat "$state/lock")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    # The writers stop by themselves once the daemon is gone (ENOTCONN at their next open,
    # fsync or close); none may still be running when the state dir is mounted again. They
    # are stopped before the dead mount is detached: with FUSE passthrough, writes through a
    # file already open still succeed after the daemon died, so a writer may go on for a
    # while, and after the detach its next open would reach the directory under the mount.
    for _ in $(seq 20); do kill -0 "$wl_pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 -- "-$wl_pid" 2>/dev/null || true
    wait "$wl_pid" 2>/dev/null || true
    wl_pid=
    fusermount3 -uz "$mp"
    lost_before=$(wc -l <"$work/lost")

    "$stratus" mount "$remote" "$mp" --state-dir "$state" --write-back 0.2 >/dev/null
    local_out=$(python3 "$here/scripts/crash_workload.py" check "$mp" "$logs" --settle)
    read -r _ now_acks _ local_losses _ inflight <<<"$(head -1 <<<"$local_out")"
    if [ "$local_losses" -ne 0 ]; then
        fail "$local_losses acknowledged writes lost or unreadable after the remount"
        echo "$local_out" >&2
        record_losses "$local_out"
    fi
    drained=yes
    if ! "$stratus" sync "$mp" --wait --timeout 300 >"$work/sync.out" 2>&1; then
        fail "the queue did not drain: $(tail -n +2 "$work/sync.out" | head -3 | tr -s ' \n' ' ')"
        drained=no
        drain_failures=$((drain_failures + 1))
    fi
    if [[ $remote == s3://* || $remote == az://* || $remote == gs://* ]]; then
        # Read the remote back through a mount that knows nothing but the remote.
        "$stratus" mount "$remote" "$check_mp" --state-dir "$work/check-state-$r" >/dev/null
        remote_out=$(python3 "$here/scripts/crash_workload.py" check "$check_mp" "$logs")
        "$stratus" unmount "$check_mp" >/dev/null
    else
        remote_out=$(python3 "$here/scripts/crash_workload.py" check "${remote#file://}" "$logs")
    fi
    read -r _ _ _ remote_losses _ <<<"$(head -1 <<<"$remote_out")"
    if [ "$remote_losses" -ne 0 ]; then
        fail "$remote_losses paths on the remote differ from the last acknowledged (or settled) version"
        echo "$remote_out" >&2
        record_losses "$remote_out"
    fi
    "$stratus" unmount "$mp" >/dev/null
    new_losses=$(($(wc -l <"$work/lost") - lost_before))
    echo "round $r: killed after ${delay_ms} ms, $((now_acks - acks)) acknowledged writes" \
        "($inflight in flight), $new_losses new losses, queue drained: $drained"
    acks=$now_acks
done

losses=$(wc -l <"$work/lost")
echo "crash: $rounds rounds, $acks acknowledged writes, $losses losses"
if [ "$losses" -ne 0 ] || [ "$drain_failures" -ne 0 ]; then
    keep=1
    [ "$drain_failures" -eq 0 ] || echo "crash: the queue failed to drain in $drain_failures rounds" >&2
    echo "crash: lost paths in $work/lost; logs and state kept in $work" >&2
    exit 1
fi

#!/usr/bin/env bash
# Scale (issue 13): a first mount of a big bucket. Creates OBJECTS small objects in DIRS
# directories, mounts them with a fresh state dir and measures: the time until the mount is
# live (`stratus mount` returns), the first `ls` of the root, `find | wc -l` over the whole
# tree, how many requests the server answered by then (listing pages, HEADs), the daemon's peak
# memory (VmHWM), and how long the background reads of the metadata a listing lacks take.
#
#   scripts/bench-scale.sh [--objects N] [--dirs D] [--remote s3|local] [--settle S] [--wait-meta]
#
# --objects N     objects to create (default 100000)
# --dirs D        directories they are spread over (default 1000)
# --remote s3     (default) moto on 127.0.0.1, the bucket filled through moto's backend
#                 (MOTO_SEED) and moto's listing made O(page) (MOTO_FAST_LISTING; see
#                 scripts/moto_server.py: stock moto sorts the whole bucket for every page)
# --remote local  a local folder (files written by Python), whose listing carries every
#                 file's attributes (no HEADs at all)
# --settle S      after find, let the mount run S more seconds (polls, background reads) before
#                 the last memory reading (default 120)
# --wait-meta     then also wait until the background metadata reads are done (on moto, about
#                 85 HEADs a second: 20 minutes for 100,000 objects)
#
# Prints one Markdown table row per run on stdout (and the daemon's log lines on the listing).
# Needs root and /dev/fuse. Environment: STRATUS=PATH, the binary to measure (default
# target/release/stratus, built if missing). Everything it starts is stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prog=bench-scale
# shellcheck source=scripts/bench_lib.sh
. "$here/scripts/bench_lib.sh"

objects=100000 dirs=1000 remote=s3 wait_meta=0 settle=120
while [ $# -gt 0 ]; do
    case "$1" in
        --objects) [ $# -ge 2 ] || die "--objects needs a value"; objects=$2; shift ;;
        --dirs) [ $# -ge 2 ] || die "--dirs needs a value"; dirs=$2; shift ;;
        --remote) [ $# -ge 2 ] || die "--remote needs a value"; remote=$2; shift ;;
        --settle) [ $# -ge 2 ] || die "--settle needs a value"; settle=$2; shift ;;
        --wait-meta) wait_meta=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
    shift
done
tools="python3 $here/scripts/bench_tools.py"
bucket=scale-bench

common_preconditions
install_missing curl
find_stratus
work=$(mktemp -d /var/tmp/stratus-bench-scale.XXXXXX)
install_traps

t0=$(now)
case "$remote" in
    s3)
        port=$($tools freeport)
        MOTO_SEED="$bucket:$objects:$dirs" MOTO_FAST_LISTING=1 \
            python3 "$here/scripts/moto_server.py" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
        register_pid $! 0 moto
        moto_pid=$!
        moto_endpoint=http://127.0.0.1:$port
        $tools wait-http "$moto_endpoint/moto-api/" --timeout 3600 || die "moto did not start; see $work/moto.log"
        url="s3://$bucket"
        ;;
    local)
        mkdir -p "$work/remote"
        python3 - "$work/remote" "$objects" "$dirs" <<'EOF'
import os, sys
root, n, d = sys.argv[1], int(sys.argv[2]), max(1, int(sys.argv[3]))
for j in range(d):
    os.mkdir(os.path.join(root, f"d{j:05d}"))
for i in range(n):
    with open(os.path.join(root, f"d{i % d:05d}", f"f{i:07d}"), "w") as f:
        f.write(str(i))
EOF
        url=$work/remote
        ;;
    *) die "--remote is s3 or local" ;;
esac
say "$objects objects in $dirs directories created on $remote in $(since "$t0") s"

requests() { # REGEX: requests moto answered so far whose request line starts so (0 on a folder)
    [ "$remote" = s3 ] || { echo 0; return; }
    grep -cE "\"$1" "$work/moto.log" || true
}
heads_before=$(requests "HEAD /$bucket/") lists_before=$(requests "GET /$bucket\\?[^ ]*list-type=2")

mnt=$work/mnt state=$work/state
mkdir -p "$mnt"
register_mount stratus "$mnt"
t=$(now)
stratus_env "$stratus" mount "$url" "$mnt" --state-dir "$state" >"$work/mount.out" 2>&1 ||
    die "stratus mount failed: $(cat "$work/mount.out")"
mount_s=$(since "$t")
daemon_pid=$(cat "$state/lock")
register_pid "$daemon_pid" 10 stratus
t=$(now)
top=$(ls "$mnt" | wc -l)
ls_s=$(since "$t")
heads_ls=$(($(requests "HEAD /$bucket/") - heads_before))
t=$(now)
found=$(find "$mnt" | wc -l)
find_s=$(since "$t")
heads_find=$(($(requests "HEAD /$bucket/") - heads_before))
lists=$(($(requests "GET /$bucket\\?[^ ]*list-type=2") - lists_before))
hwm_find=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$daemon_pid/status")
say "mount ${mount_s} s, ls ${ls_s} s ($top entries), find ${find_s} s ($found paths), HEADs by then $heads_find"

sleep "$settle"
meta_s="–"
if [ "$wait_meta" = 1 ] && [ "$remote" = s3 ]; then
    for _ in $(seq 36000); do
        grep -q "metadata of the listed entries read" "$state/stratus.log" 2>/dev/null && break
        sleep 0.1
    done
    meta_s=$(grep "metadata of the listed entries read" "$state/stratus.log" | sed -n 's/.*secs=\([0-9.]*\).*/\1/p' | head -1)
fi
hwm=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$daemon_pid/status")
heads_all=$(($(requests "HEAD /$bucket/") - heads_before))
grep -E "listing the remote|state dir filled" "$state/stratus.log" | sed 's/^/    /' >&2 || true

polls=$(($(requests "GET /$bucket\\?[^ ]*list-type=2") - lists_before))
echo "| $remote | $objects / $dirs | $mount_s s | $ls_s s | $find_s s ($((found - 1)) paths) | $lists | $heads_ls / $heads_find | ${meta_s} s ($heads_all HEADs, $polls listing pages) | $hwm_find / $hwm MiB |"

#!/usr/bin/env bash
# Bandwidth-limit benchmark (issue 13): does `--bwlimit RATE` hold the rate? One moto S3 server
# on 127.0.0.1 and one stratus mount of it, in one invocation:
#   upload    a file of random data copied into the mount under --bwlimit RATE, timed from the
#             start of the copy until `stratus sync --wait` says the object is on the server;
#             then again after `stratus bwlimit MNT off`, for reference
#   download  the same file evicted from the cache (`stratus clean --cache`, page cache dropped)
#             and read back with dd under `stratus bwlimit MNT off:RATE`, then again with no limit
# and prints a markdown section (size, seconds, MiB/s, ratio to the limit, this command line)
# between <!-- bench-bwlimit:begin/end --> markers, which scripts/bench.sh keeps when it rewrites
# docs/benchmarks.md.
#
#   scripts/bench-bwlimit.sh [--rate 4M] [--size-mib 64] [--out FILE] [--notes FILE]
#
# --out FILE    also put the section in FILE, in place of its bench-bwlimit block (appended when
#               FILE has none), e.g. docs/benchmarks.md
# --notes FILE  markdown added to the section after the table (the analysis)
#
# Needs root (it drops the page cache) and /dev/fuse. STRATUS=PATH picks the binary (default
# target/release/stratus, built if missing); the rate is the network's, so a debug build
# measures the same. Every mount and process it starts is stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prog=bench-bwlimit
# shellcheck source=scripts/bench_lib.sh
. "$here/scripts/bench_lib.sh"
command_line="scripts/bench-bwlimit.sh${*:+ $*}"
[ -z "${STRATUS:-}" ] || command_line="STRATUS='$STRATUS' $command_line"

rate_arg=4M
size_mib=64
out= notes_file=
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate_arg=$2; shift ;;
        --size-mib) size_mib=$2; shift ;;
        --out) out=$2; shift ;;
        --notes) notes_file=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [--rate 4M] [--size-mib 64] [--out FILE] [--notes FILE]" >&2; exit 2 ;;
    esac
    shift
done
case "$rate_arg" in
    *K | *k) limit_mib=$(awk -v v="${rate_arg%?}" 'BEGIN { print v / 1024 }') ;;
    *M | *m) limit_mib=${rate_arg%?} ;;
    *G | *g) limit_mib=$(awk -v v="${rate_arg%?}" 'BEGIN { print v * 1024 }') ;;
    *) die "--rate $rate_arg: give it with a unit (K, M or G)" ;;
esac

[ -z "$notes_file" ] || [ -r "$notes_file" ] || die "--notes $notes_file is not readable"
[ -z "$out" ] || [ -d "$(dirname "$out")" ] || die "the directory of --out $out does not exist"

common_preconditions
install_missing curl:curl dd:coreutils
find_stratus
tools="python3 $here/scripts/bench_tools.py"
unset AWS_CA_BUNDLE
work=$(mktemp -d /var/tmp/stratus-bench-bwlimit.XXXXXX)
install_traps

start_moto bwbench "$work/moto.log"
mnt=$work/mnt
mkdir -p "$mnt"
stratus_env "$stratus" mount s3://bwbench/data "$mnt" --foreground --state-dir "$work/state" \
    --write-back 0.2 --bwlimit "$rate_arg" >"$work/stratus.log" 2>&1 &
register_pid $! 10 stratus
register_mount stratus "$mnt"
wait_mounted "$mnt" $! "$work/stratus.log"

head -c $((size_mib << 20)) /dev/urandom >"$work/src.bin"
sum=$(sha256sum <"$work/src.bin" | cut -d' ' -f1)

timed_upload() { # NAME: copy src.bin in, wait until it is on the server; prints seconds
    local t0
    t0=$(now)
    cp "$work/src.bin" "$mnt/$1"
    "$stratus" sync "$mnt" --wait --timeout 600 >/dev/null
    since "$t0"
}
timed_read() { # NAME: evict, drop caches, read back and check; prints seconds
    local t0 got
    "$stratus" clean "$mnt" --cache >/dev/null
    drop_caches
    t0=$(now)
    got=$(dd if="$mnt/$1" bs=1M status=none | sha256sum | cut -d' ' -f1)
    local secs
    secs=$(since "$t0")
    [ "$got" = "$sum" ] || die "$1 read back wrong"
    echo "$secs"
}

say "upload under --bwlimit $rate_arg"
up_limited=$(timed_upload limited.bin)
"$stratus" bwlimit "$mnt" off >/dev/null
say "upload with no limit"
up_free=$(timed_upload free.bin)
"$stratus" bwlimit "$mnt" "off:$rate_arg" >/dev/null
say "download under a $rate_arg download limit"
down_limited=$(timed_read limited.bin)
"$stratus" bwlimit "$mnt" off >/dev/null
say "download with no limit"
down_free=$(timed_read free.bin)

row() { # LABEL SECONDS LIMITED(1|0)
    local r
    r=$(rate "$size_mib" "$2")
    if [ "$3" = 1 ]; then
        printf '| %s | %s s | %s MiB/s | %s |\n' "$1" "$2" "$r" \
            "$(awk -v r="$r" -v l="$limit_mib" 'BEGIN { printf "%.2fx the limit", r / l }')"
    else
        printf '| %s | %s s | %s MiB/s | - |\n' "$1" "$2" "$r"
    fi
}
{
    echo "<!-- bench-bwlimit:begin (written by scripts/bench-bwlimit.sh; scripts/bench.sh keeps it) -->"
    echo
    echo "## Bandwidth limit (issue 13)"
    echo
    echo "Produced by \`$command_line\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(stratus_version | head -1): one $size_mib MiB file of random data, one moto server on 127.0.0.1."
    echo
    echo "| transfer | time | rate | against the limit |"
    echo "|---|---:|---:|---|"
    row "upload, --bwlimit $rate_arg (copy until on the server)" "$up_limited" 1
    row "upload, no limit" "$up_free" 0
    row "download, limit off:$rate_arg (cold read, dd bs=1M)" "$down_limited" 1
    row "download, no limit" "$down_free" 0
    if [ -n "$notes_file" ]; then
        echo
        cat "$notes_file"
    fi
    echo
    echo "<!-- bench-bwlimit:end -->"
} >"$work/section.md"
cat "$work/section.md"
if [ -n "$out" ]; then
    $tools put-section bench-bwlimit "$out" "$work/section.md"
    say "section written to $out"
fi

#!/usr/bin/env bash
# Upload throughput (issue 13): the upload drain of a big file on a stratus mount against a plain
# multipart PUT of the same bytes to the same server, and against rclone, all on one moto S3
# server on 127.0.0.1, interleaved run by run so that the machine's load hits each alike.
#
#   scripts/bench-upload.sh [--size MIB] [--runs N] [--out FILE]
#
# Each run, in turn:
#   baseline  target/release/examples/put_baseline: object_store's put_multipart + WriteMultipart,
#             the client library, part size (8 MiB) and request signing stratus uses, 8 parts in
#             flight, from the file on the local disk: no file system, journal, hash or
#             precondition around it
#   stratus   the file written into the mount (dd ... conv=fsync, untimed), then timed:
#             `stratus sync MNT --wait`, the upload drain as scripts/bench.sh measures it; the
#             object is then read back from moto directly and compared (SHA-256)
#   rclone    `rclone copyto FILE X:BUCKET/KEY` (rclone 1.75, its defaults: 5 MiB chunks,
#             4 in flight), timed from start to exit
# Every object is deleted after its step, so that moto (which keeps objects in RAM) holds one at
# a time.
#
# --size MIB   the file's size (default 512)
# --runs N     runs of the three (default 3)
# --out FILE   where the section goes, between its markers (replaced, or appended when the file
#              has none); default docs/benchmarks.md, whose rewrite by scripts/bench.sh keeps it
#
# Needs root and /dev/fuse. Environment: STRATUS=PATH, the binary to measure (default
# target/release/stratus, built if missing); STRATUS_BEFORE=PATH, another build (an older
# revision) measured the same way on a mount of its own, in the same runs; the baseline is
# built with `cargo build --release --example put_baseline` when missing. Everything it starts
# is stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prog=bench-upload
# shellcheck source=scripts/bench_lib.sh
. "$here/scripts/bench_lib.sh"
command_line="scripts/bench-upload.sh${*:+ $*}"
[ -z "${STRATUS:-}" ] || command_line="STRATUS='$STRATUS' $command_line"
before=${STRATUS_BEFORE:-}
[ -z "$before" ] || command_line="STRATUS_BEFORE='$before' $command_line"

size_mib=512 runs=3
out=$here/docs/benchmarks.md
while [ $# -gt 0 ]; do
    case "$1" in
        --size) [ $# -ge 2 ] || die "--size needs a value"; size_mib=$2; shift ;;
        --runs) [ $# -ge 2 ] || die "--runs needs a value"; runs=$2; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
    shift
done
tools="python3 $here/scripts/bench_tools.py"
bucket=upload-bench

common_preconditions
install_missing curl
find_stratus
find_rclone
baseline=${BASELINE:-$here/target/release/examples/put_baseline}
if [ ! -x "$baseline" ]; then
    say "building the baseline (cargo build --release --example put_baseline)"
    (cd "$here" && cargo build --release --example put_baseline) >&2
fi
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d /var/tmp/stratus-bench-upload.XXXXXX)
install_traps

start_moto "$bucket" "$work/moto.log"
head -c "$((size_mib << 20))" /dev/urandom >"$work/src.bin"
want=$(sha256sum "$work/src.bin" | cut -d' ' -f1)

mount_one() { # BINARY NAME: a mount of the bucket at $work/NAME (state dir $work/NAME-state)
    local m=$work/$2 st=$work/$2-state pid
    mkdir -p "$m"
    register_mount stratus "$m"
    stratus_env "$1" mount "s3://$bucket" "$m" --state-dir "$st" >"$work/$2-mount.out" 2>&1 ||
        die "stratus mount failed: $(cat "$work/$2-mount.out")"
    pid=$(cat "$st/lock" 2>/dev/null || true)
    [ -z "$pid" ] || register_pid "$pid" 10 "stratus $2"
}
mount_one "$stratus" mnt
[ -z "$before" ] || mount_one "$before" before
rclone_env_for "$work/rclone.conf"

drain_on() { # BINARY NAME KEY: the file written into the mount (untimed), then the drain timed;
    # sets drain_secs
    local m=$work/$2 t0
    drop_caches
    dd if="$work/src.bin" of="$m/$3" bs=1M conv=fsync status=none
    t0=$(now)
    "$1" sync "$m" --wait --timeout 1200 >"$work/sync.out" 2>&1 ||
        die "stratus sync --wait failed: $(tail -3 "$work/sync.out")"
    drain_secs=$(since "$t0")
    check_object "$3"
    rm "$m/$3"
    "$1" sync "$m" --wait --timeout 600 >/dev/null 2>&1 || die "stratus did not delete $3"
}

delete_object() { curl -sS -f -o /dev/null -X DELETE "$moto_endpoint/$bucket/$1" || die "could not delete $1"; }
check_object() { # KEY: the object on moto is the file, byte for byte
    local got
    got=$(curl -sS -f "$moto_endpoint/$bucket/$1" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || die "$1 on moto is not the file"
}

rows=()
for run in $(seq "$runs"); do
    say "run $run of $runs"
    # baseline
    out_b=$(stratus_env "$baseline" "$work/src.bin" "$bucket" base.bin 8 8) || die "the baseline PUT failed"
    base_secs=${out_b%% s,*}
    check_object base.bin
    delete_object base.bin

    # stratus: written (untimed), then drained (timed); with a second build, the two take
    # turns going first, so that neither always follows the same step
    before_secs=
    if [ -n "$before" ] && [ $((run % 2)) -eq 0 ]; then
        drain_on "$before" before before.bin
        before_secs=$drain_secs
    fi
    drain_on "$stratus" mnt big.bin
    if [ -n "$before" ] && [ $((run % 2)) -eq 1 ]; then
        after_secs=$drain_secs
        drain_on "$before" before before.bin
        before_secs=$drain_secs drain_secs=$after_secs
    fi

    # rclone copyto
    t0=$(now)
    "${rclone_env[@]}" "$rclone_bin" copyto "$work/src.bin" "X:$bucket/rclone.bin" >"$work/rclone.out" 2>&1 ||
        die "rclone copyto failed: $(tail -3 "$work/rclone.out")"
    rclone_secs=$(since "$t0")
    check_object rclone.bin
    delete_object rclone.bin

    rows+=("$run	$base_secs	$drain_secs	$rclone_secs	$before_secs")
    say "run $run: baseline $base_secs s, stratus drain $drain_secs s${before:+ (before: $before_secs s)}, rclone copyto $rclone_secs s"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

mibs() { awk -v n="$size_mib" -v s="$1" 'BEGIN { printf "%.0f", n / s }'; }
{
    echo "<!-- bench-upload:begin (written by scripts/bench-upload.sh; scripts/bench.sh keeps it) -->"
    echo
    echo "## Upload throughput (issue 13)"
    echo
    echo "Produced by \`$command_line\` on $(date -u '+%Y-%m-%d %H:%M UTC'): one moto S3 server on"
    echo "127.0.0.1 for all three, run by run in turn. **baseline**: a plain multipart PUT of the same"
    echo "file with object_store (\`examples/put_baseline.rs\`: the client library, 8 MiB parts and"
    echo "payload signing stratus uses, 8 parts in flight, nothing around it). **stratus**: the file"
    echo "written into the mount (defaults) with \`dd conv=fsync\`, then \`stratus sync MNT --wait\`"
    echo "timed, as scripts/bench.sh times its upload drain. **rclone**: \`rclone copyto FILE"
    echo "X:BUCKET/KEY\` with its defaults. Each object was read back from moto and had the file's"
    echo "SHA-256."
    echo
    echo "- machine: $(nproc) cores, $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM; load average $load_start at the start, $load_end at the end"
    echo "- $(stratus_version); $("$rclone_bin" version 2>/dev/null | head -1); moto $(python3 -c 'import moto; print(moto.__version__)')"
    [ -z "$before" ] || echo "- before: \`$before\`, $("$before" --version 2>/dev/null | head -1), built $(date -u -r "$before" '+%Y-%m-%d %H:%M UTC'), on a mount of its own in the same runs (after stratus in odd runs, before it in even ones)"
    echo
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
    if [ -n "$before" ]; then
        echo "| run | baseline PUT | stratus drain | stratus before | rclone copyto | stratus / baseline (target ≥ 0.8) | before / baseline | stratus / rclone |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    else
        echo "| run | baseline PUT | stratus drain | rclone copyto | stratus / baseline (target ≥ 0.8) | stratus / rclone |"
        echo "|---:|---:|---:|---:|---:|---:|"
    fi
    for r in "${rows[@]}"; do
        IFS=$'\t' read -r run b d c o <<<"$r"
        if [ -n "$before" ]; then
            echo "| $run | $b s ($(mibs "$b") MiB/s) | $d s ($(mibs "$d") MiB/s) | $o s ($(mibs "$o") MiB/s) | $c s ($(mibs "$c") MiB/s) |" \
                "$(ratio "$b" "$d") | $(ratio "$b" "$o") | $(ratio "$c" "$d") |"
        else
            echo "| $run | $b s ($(mibs "$b") MiB/s) | $d s ($(mibs "$d") MiB/s) | $c s ($(mibs "$c") MiB/s) |" \
                "$(ratio "$b" "$d") | $(ratio "$c" "$d") |"
        fi
    done
    echo
    echo "<!-- bench-upload:end -->"
} >"$work/section.md"
$tools put-section bench-upload "$out" "$work/section.md"
say "section written to $out"
cat "$work/section.md"

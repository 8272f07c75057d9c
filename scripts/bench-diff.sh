#!/usr/bin/env bash
# Differential uploads (issue 13): what a 1-byte append and a 4 KiB patch in the middle of a big
# file cost on the wire, on stratus over a moto S3 server on 127.0.0.1. scripts/count_proxy.py
# sits between the mount and moto and counts every byte the mount sends (request heads and
# bodies); each change is timed from the write to the end of `stratus sync --wait`, and the
# object is then read back from moto directly and compared with the file (SHA-256).
#
#   scripts/bench-diff.sh [--size MIB] [--out FILE]
#
# --size MIB   the file's size (default 128)
# --out FILE   where the section goes, between its markers (replaced, or appended when the file
#              has none); default docs/benchmarks.md, whose rewrite by scripts/bench.sh keeps it
#
# Needs root and /dev/fuse. Environment: STRATUS=PATH, the binary to measure (default
# target/release/stratus, built if missing). Everything it starts is stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prog=bench-diff
# shellcheck source=scripts/bench_lib.sh
. "$here/scripts/bench_lib.sh"
command_line="scripts/bench-diff.sh${*:+ $*}"
[ -z "${STRATUS:-}" ] || command_line="STRATUS='$STRATUS' $command_line"

size_mib=128
out=$here/docs/benchmarks.md
while [ $# -gt 0 ]; do
    case "$1" in
        --size) [ $# -ge 2 ] || die "--size needs a value"; size_mib=$2; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
    shift
done
tools="python3 $here/scripts/bench_tools.py"
bucket=diff-bench

common_preconditions
install_missing curl
find_stratus
work=$(mktemp -d /var/tmp/stratus-bench-diff.XXXXXX)
install_traps

start_moto "$bucket" "$work/moto.log"
direct=$moto_endpoint
proxy_port=$($tools freeport)
python3 "$here/scripts/count_proxy.py" "$proxy_port" "${direct##*:}" "$work/count" &
register_pid $! 0 count-proxy
for _ in $(seq 100); do [ -s "$work/count" ] && break; sleep 0.1; done
# stratus_env points the mount at $moto_endpoint: the proxy.
moto_endpoint=http://127.0.0.1:$proxy_port

mnt=$work/mnt state=$work/state
mkdir -p "$mnt"
register_mount stratus "$mnt"
stratus_env "$stratus" mount "s3://$bucket" "$mnt" --state-dir "$state" --write-back 0.2 \
    --poll-interval 0 >"$work/mount.out" 2>&1 || die "stratus mount failed: $(cat "$work/mount.out")"
daemon_pid=$(cat "$state/lock" 2>/dev/null || true)
[ -z "$daemon_pid" ] || register_pid "$daemon_pid" 10 stratus

rows=()
step() { # LABEL COMMAND...: runs the change, waits for the upload, records bytes sent and time
    local label=$1 before after t0 secs
    shift
    before=$(cat "$work/count")
    t0=$(now)
    "$@"
    "$stratus" sync "$mnt" --wait --timeout 1200 >/dev/null
    secs=$(since "$t0")
    after=$(cat "$work/count")
    local got want
    got=$(curl -sS -f "$direct/$bucket/big.bin" | sha256sum | cut -d' ' -f1)
    want=$(sha256sum "$work/copy" | cut -d' ' -f1)
    [ "$got" = "$want" ] || die "$label: the object on moto is not the file"
    rows+=("$label	$((after - before))	$secs")
    say "$label: $((after - before)) bytes sent in $secs s"
}

write_whole() {
    head -c "$((size_mib << 20))" /dev/urandom >"$work/copy"
    cp "$work/copy" "$mnt/big.bin"
}
append_byte() {
    printf '!' >>"$work/copy"
    printf '!' >>"$mnt/big.bin"
}
patch_middle() {
    head -c 4096 /dev/urandom >"$work/patch"
    local at=$((size_mib * 256 / 2))
    for f in "$work/copy" "$mnt/big.bin"; do
        dd if="$work/patch" of="$f" bs=4096 seek="$at" count=1 conv=notrunc status=none
    done
}

step "write ${size_mib} MiB + upload" write_whole
step "1-byte append" append_byte
step "4 KiB patch in the middle" patch_middle

{
    echo "<!-- bench-diff:begin (written by scripts/bench-diff.sh; scripts/bench.sh keeps it) -->"
    echo
    echo "## Differential uploads (issue 13)"
    echo
    echo "Produced by \`$command_line\` on $(date -u '+%Y-%m-%d %H:%M UTC'): stratus over one moto S3 server"
    echo "on 127.0.0.1, \`--write-back 0.2 --poll-interval 0\`, with scripts/count_proxy.py between the"
    echo "mount and moto counting the bytes the mount sends (request heads and bodies). Each change"
    echo "is timed from the write to the end of \`stratus sync --wait\`; after each, the object read"
    echo "from moto directly had the file's SHA-256."
    echo
    echo "- machine: $(nproc) cores, $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM; $(stratus_version)"
    echo
    echo "| change to a ${size_mib} MiB file | bytes sent | MiB | time | target: under 24 MiB (2 parts) |"
    echo "|---|---:|---:|---:|---|"
    for r in "${rows[@]}"; do
        IFS=$'\t' read -r label bytes secs <<<"$r"
        mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
        case "$label" in
            write*) verdict="–" ;;
            *) verdict=$([ "$bytes" -lt $((24 << 20)) ] && echo met || echo "**missed**") ;;
        esac
        echo "| $label | $bytes | $mib | $secs s | $verdict |"
    done
    echo
    echo "<!-- bench-diff:end -->"
} >"$work/section.md"

python3 - "$out" "$work/section.md" <<'PY'
import re, sys
out, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
try:
    text = open(out).read()
except FileNotFoundError:
    text = ""
b = re.search(r"^<!-- bench-diff:begin\b.*-->$", text, re.M)
e = re.search(r"^<!-- bench-diff:end -->$", text, re.M)
if b and e and e.start() > b.start():
    text = text[:b.start()] + section + text[e.end():]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(out, "w").write(text)
PY
say "section written to $out"
cat "$work/section.md"

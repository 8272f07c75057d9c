#!/usr/bin/env bash
# Block-cache benchmark (issue 3). One object of random data (1 GiB) on one moto S3 server on
# 127.0.0.1, read in one invocation by
#   get      a plain GET of the whole object (curl --aws-sigv4), twice; the faster one counts.
#            Also the whole object as 1 MiB and as 16 MiB ranged GETs, 8 in flight: what the
#            server gives a client that fetches in blocks of that size
#   local    a copy of the same bytes in a file on the local disk
#   stratus  stratus mount s3://BUCKET
#   rclone   rclone mount --vfs-cache-mode full, the same bucket
# with these workloads, each timed from start to exit:
#   cold sequential read   dd bs=1M through a fresh mount (empty cache, page cache dropped),
#                          then checked against the SHA-256 of the data (untimed)
#   warm re-read           dd bs=1M again, page cache dropped (from the mount's own disk cache)
#                          and then kept (what a program re-opening the file sees), against the
#                          local copy read the same two ways; each the faster of two runs
#   random 4 KiB reads     fio randread: time based on the warm cache (page cache dropped); a few
#                          hundred reads on a second fresh mount (cold: what one read costs); time
#                          based on a third fresh mount (cold). stratus's "downloaded" counter and
#                          the blocks allocated to rclone's cache file say how much of the object
#                          each cold run fetched
# The report (figures, ratios, issue 3's targets met or missed, machine, versions, this command)
# replaces the block between the bench-cache markers of docs/benchmarks.md, or of --out FILE
# (appended when absent; the rest of the file, scripts/bench.sh's report, is left alone).
#
#   scripts/bench-cache.sh [--quick] [--out FILE] [--notes FILE] [--stock-moto]
#
# --quick        a 256 MiB object and 5 s random runs (under a minute instead of about 2.5)
# --out FILE     the markdown file to write the block into; default docs/benchmarks.md
# --notes FILE   markdown put under the report's notes (the analysis of missed targets)
# --stock-moto   leave moto's ranged GETs as they are: each reads the whole object (about 0.5 s
#                per GET of a 1 GiB object), which measures moto, not the cache. By default moto
#                runs with MOTO_RANGED_GETS_IN_PLACE=1 (see scripts/moto_server.py)
#
# Needs root (it drops the page cache) and /dev/fuse. Installs rclone 1.75 (pip), fio, curl and moto when
# missing. moto keeps the object in a directory under /dev/shm, so that dropping the page cache
# only ever empties the client side. Environment:
#   STRATUS=PATH      the binary to measure (default target/release/stratus, built if missing)
#   STRATUS_REV=TEXT  the git revision that binary was built from, for the report (default HEAD,
#                     flagged when src/ has uncommitted changes or the binary is older)
#   BENCH_DIR=DIR     where the data goes (default a fresh /var/tmp/stratus-bench-cache.XXXXXX,
#                     removed at the end); it must be on the disk under test
#   BENCH_TARGETS="..."  a subset of: get local stratus rclone (in that order)
# Every mount and process it starts is stopped on exit, also on failure or Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prog=bench-cache
# shellcheck source=scripts/bench_lib.sh
. "$here/scripts/bench_lib.sh"
command_line="scripts/bench-cache.sh${*:+ $*}"
for v in BENCH_TARGETS STRATUS; do
    [ -z "${!v:-}" ] || command_line="$v='${!v}' $command_line"
done

usage() {
    echo "usage: $0 [--quick] [--out FILE] [--notes FILE] [--stock-moto]" >&2
    exit 2
}

quick=0
stock_moto=0
out=$here/docs/benchmarks.md
notes_file=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --stock-moto) stock_moto=1 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift ;;
        --out=*) out=${1#--out=} ;;
        --notes) [ $# -ge 2 ] || usage; notes_file=$2; shift ;;
        --notes=*) notes_file=${1#--notes=} ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) usage ;;
    esac
    shift
done
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
[ -d "$(dirname "$out")" ] || die "the directory of --out $out does not exist"
if [ -n "$notes_file" ]; then
    [ -r "$notes_file" ] || die "--notes $notes_file is not readable"
    notes_file=$(cd "$(dirname "$notes_file")" && pwd)/$(basename "$notes_file")
fi

all_targets="get local stratus rclone"
targets=${BENCH_TARGETS:-$all_targets}
for t in $targets; do
    case " $all_targets " in *" $t "*) ;; *) die "unknown target '$t' in BENCH_TARGETS (known: $all_targets)" ;; esac
done

if [ $quick -eq 1 ]; then
    size_mib=256 rand_secs=5 few_reads=64 step_timeout=300
else
    size_mib=1024 rand_secs=10 few_reads=256 step_timeout=900
fi
[ $stock_moto -eq 0 ] || step_timeout=$((step_timeout * 4))
size_bytes=$((size_mib * 1024 * 1024))
size_label=$([ "$size_mib" -ge 1024 ] && echo "$((size_mib / 1024)) GiB" || echo "$size_mib MiB")
cache_size=$(((size_mib * 2 + 1023) / 1024 > 4 ? (size_mib * 2 + 1023) / 1024 : 4))G
bucket=cache-bench
key=big.dat
tools="python3 $here/scripts/bench_tools.py"

# ---------------------------------------------------------------------------------------------
# preconditions

common_preconditions
install_missing fio fusermount3:fuse3 curl getfattr:attr
rclone_bin=
case " $targets " in *" rclone "*) find_rclone ;; esac
curl --help all 2>/dev/null | grep -q -- --aws-sigv4 || die "this curl has no --aws-sigv4 (needs curl 7.75 or newer)"
find_stratus

shm_avail_mib=$(df -Pm /dev/shm | awk 'NR == 2 { print $4 }')
[ "$shm_avail_mib" -ge $((size_mib * 2 + 256)) ] ||
    die "/dev/shm has $shm_avail_mib MiB free; moto's copy of the object needs $((size_mib * 2 + 256))"
avail_mib=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
[ "$avail_mib" -ge $((size_mib * 8 + 1024)) ] ||
    die "only $avail_mib MiB of memory available, want $((size_mib * 8 + 1024)): moto holds the object in /dev/shm, reads a PUT's body into memory and copies the whole object for each plain GET (peak RSS ~6x the object)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load_start%% *}" 'BEGIN { exit !(l > 1.0) }'; then
    say "warning: load average $load_start on $(nproc) cores: the machine is not idle, the figures will be noisy"
fi

# ---------------------------------------------------------------------------------------------
# work dir, results

if [ -n "${BENCH_DIR:-}" ]; then
    mkdir -p "$BENCH_DIR"
    [ -z "$(ls -A "$BENCH_DIR")" ] || die "BENCH_DIR=$BENCH_DIR is not empty"
    work=$(cd "$BENCH_DIR" && pwd)
else
    work=$(mktemp -d /var/tmp/stratus-bench-cache.XXXXXX)
fi
install_traps
disk_avail_mib=$(df -Pm "$work" | awk 'NR == 2 { print $4 }')
[ "$disk_avail_mib" -ge $((size_mib * 4 + 1024)) ] ||
    die "$work has $disk_avail_mib MiB free, want $((size_mib * 4 + 1024)) (the local copy and two caches per mount)"
shm=$(mktemp -d /dev/shm/stratus-bench-cache.XXXXXX)
cleanup_hook() { rm -rf "$shm"; } # after teardown stopped moto
: >"$work/results" # TARGET KEY LABEL VALUE UNIT, tab-separated
: >"$work/meta"    # KEY VALUE, tab-separated (for scripts/bench_tools.py cache-report)
: >"$work/notes"   # notes for the report, one per line
: >"$work/failed"  # TARGET STEP, one per line

step() { # KEY LABEL: what the current target is doing, for the failure report
    printf '%s\t%s\n' "$1" "$2" >"$work/step"
}

record() { # KEY LABEL VALUE UNIT
    printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$1" "$2" "$3" "$4" >>"$work/results"
    local shown=$3
    case "$3" in [0-9]*) shown=$(awk -v v="$3" -v u="$4" 'BEGIN {
        if (u == "B") printf "%.1f MiB", v / 1048576; else printf "%.1f %s", v, u }') ;; esac
    printf '%-8s  %-52s  %14s\n' "$target" "$2" "$shown"
}
note() { printf '%s\n' "$*" >>"$work/notes"; }

label_seq_cold="cold sequential read, ${size_label} (dd bs=1M)"
label_warm_dropped="warm re-read, page cache dropped"
label_warm_kept="warm re-read, page cache kept"
label_rand_cold="random 4 KiB reads, ${rand_secs} s, cold cache"
label_rand_warm="random 4 KiB reads, ${rand_secs} s, warm cache (page cache dropped)"
label_dl="fetched by the cold ${rand_secs} s random run"
label_rand_few="first ${few_reads} random 4 KiB reads, cold cache"
label_dl_few="fetched by those ${few_reads} reads"
label_ranged_1m="the object as 1 MiB ranged GETs, 8 in flight"
label_ranged_16m="the object as 16 MiB ranged GETs, 8 in flight"

# ---------------------------------------------------------------------------------------------
# the workloads

timed_read() { # FILE: prints MiB/s of reading FILE whole with dd bs=1M
    local t0 secs
    t0=$(now)
    timeout "$step_timeout" dd if="$1" of=/dev/null bs=1M status=none || die "dd of $1 failed or timed out"
    secs=$(since "$t0")
    rate "$size_mib" "$secs"
}

fio_rand() { # FILE OUTPUT.json [READS]: prints "IOPS READS" of a 4 KiB random read run, time
    # based, or of READS reads
    local how=(--time_based --runtime="$rand_secs")
    [ -z "${3:-}" ] || how=(--number_ios="$3")
    timeout "$step_timeout" fio --name=randread --filename="$1" --rw=randread --bs=4k --size="${size_mib}M" \
        "${how[@]}" --ioengine=psync --readonly --output-format=json --output="$2" \
        >/dev/null || die "fio randread failed: $(tail -5 "$2" 2>/dev/null)"
    python3 -c '
import json, sys
t = open(sys.argv[1]).read()
r = json.loads(t[t.index("{"):])["jobs"][0]["read"]
print("%.1f %d" % (r["iops"], r["total_ios"]))' "$2"
}

check_sha() { # FILE: the data read through the mount is the data that was put
    local got
    got=$(timeout "$step_timeout" sha256sum "$1" | cut -d' ' -f1) || die "sha256sum of $1 failed or timed out"
    [ "$got" = "$sha" ] || die "$1 read back with SHA-256 $got, the object has $sha"
}

wait_visible() { # FILE: the mount lists the object with its size
    local i
    for ((i = 0; i < 300; i++)); do
        [ "$(stat -c %s "$1" 2>/dev/null || echo none)" = "$size_bytes" ] && return 0
        sleep 0.1
    done
    die "$1 did not appear with $size_bytes bytes within 30 s"
}

s3curl() { # the plain client: curl with SigV4, straight to moto
    curl -sS -f --noproxy '*' --max-time "$step_timeout" --aws-sigv4 "aws:amz:us-east-1:s3" \
        --user bench:bench "$@"
}

stratus_downloaded() { # MNT: bytes fetched since mount (the mount's status xattr)
    getfattr --only-values -n user.stratus.status "$1" 2>/dev/null | awk -F': ' '$1 == "downloaded" { print $2 }'
}

mount_stratus() { # NAME: a fresh state dir and mountpoint; sets mnt, state, daemon_pid
    mnt=$work/$1/mnt state=$work/$1/state
    mkdir -p "$mnt"
    register_mount stratus "$mnt"
    stratus_env "$stratus" mount "s3://$bucket" "$mnt" --state-dir "$state" --cache-size "$cache_size" \
        >"$work/$1/mount.out" 2>&1 || die "stratus mount failed: $(cat "$work/$1/mount.out")"
    daemon_pid=$(cat "$state/lock" 2>/dev/null || true)
    [ -z "$daemon_pid" ] || register_pid "$daemon_pid" 10 stratus
    is_mounted "$mnt" || die "stratus mount returned but $mnt is not mounted"
    wait_visible "$mnt/$key"
}

mount_rclone() { # NAME: a fresh cache dir and mountpoint; sets mnt, cache, daemon_pid
    mnt=$work/$1/mnt cache=$work/$1/cache
    mkdir -p "$mnt"
    register_mount fuse "$mnt"
    rclone_env_for "$work/$1/rclone.conf"
    "${rclone_env[@]}" "$rclone_bin" mount "X:$bucket" "$mnt" --vfs-cache-mode full \
        --cache-dir "$cache" --log-file "$work/$1/rclone.log" --log-level INFO &
    daemon_pid=$!
    register_pid "$daemon_pid" 10 rclone
    wait_mounted "$mnt" "$daemon_pid" "$work/$1/rclone.log"
    wait_visible "$mnt/$key"
}

rclone_cached() { # bytes of the object in rclone's cache (blocks allocated to its sparse file)
    local f # rclone names the directory of a remote configured by env X{HASH}
    f=$(compgen -G "$cache/vfs/X*/$bucket/$key" | head -1 || true)
    [ -n "$f" ] || { echo 0; return; }
    du -B1 "$f" | cut -f1
}

daemon_notes() { # NAME: peak memory, and anything the daemon logged above info
    local rss log w e
    if [ -n "${daemon_pid:-}" ] && [ -r "/proc/$daemon_pid/status" ]; then
        rss=$(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$daemon_pid/status")
        note "$target ($1): peak RSS of the daemon $rss"
    fi
    case "$target" in
        stratus) log=$state/stratus.log w=' WARN ' e=' ERROR ' ;;
        rclone) log=$work/$1/rclone.log w='NOTICE' e='ERROR' ;;
    esac
    [ -r "$log" ] || return 0
    local nw ne
    nw=$(grep -c -- "$w" "$log" || true)
    ne=$(grep -c -- "$e" "$log" || true)
    [ "$nw$ne" = 00 ] || note "$target ($1): its log had $nw ${w// /} and $ne ${e// /} lines; first: \`$(grep -m1 -E -- "$w|$e" "$log" | cut -c1-200 | tr '`' "'")\`"
}

stop_mount() { # KIND: unmounts $mnt and waits for its daemon, forgetting both
    unmount_one "$1" "$mnt"
    is_mounted "$mnt" && die "$mnt is still mounted"
    [ -z "${daemon_pid:-}" ] || stop_pid "$daemon_pid" 10 "$1"
    awk -v m="$mnt" '$2 != m' "$work/mounts" >"$work/mounts.new" && mv "$work/mounts.new" "$work/mounts"
    awk -v p="${daemon_pid:-x}" '$1 != p' "$work/pids" >"$work/pids.new" && mv "$work/pids.new" "$work/pids"
}

ranged_gets() { # MIB KEY LABEL: the whole object as ranged GETs of MIB MiB, 8 in flight
    # (what a block cache with MIB MiB blocks asks of the server), one curl on kept-alive
    # connections
    local mib=$1 cfg=$work/ranged-$1.curl i n t0 secs
    n=$(((size_mib + mib - 1) / mib))
    : >"$cfg"
    for ((i = 0; i < n; i++)); do
        printf 'url = "%s"\nrange = "%d-%d"\noutput = "/dev/null"\nsilent\nshow-error\naws-sigv4 = "aws:amz:us-east-1:s3"\nuser = "bench:bench"\nfail\n%s' \
            "$url" $((i * mib * 1048576)) $(((i + 1) * mib * 1048576 - 1)) "$([ $i -lt $((n - 1)) ] && echo next)" >>"$cfg"
        printf '\n' >>"$cfg"
    done
    step "$2" "$3"
    t0=$(now)
    curl -sS --noproxy '*' --max-time "$step_timeout" --parallel --parallel-max 8 -K "$cfg" ||
        die "ranged GETs of $mib MiB failed"
    secs=$(since "$t0")
    record "$2" "$3" "$(rate "$size_mib" "$secs")" MiB/s
}

run_get() {
    local i out n secs best=0 all=()
    for i in 1 2; do
        step seq-cold "plain GET, run $i"
        out=$(s3curl -o /dev/null -w '%{size_download} %{time_total}' "$url") ||
            die "GET $url failed or timed out"
        read -r n secs <<<"$out"
        [ "$n" = "$size_bytes" ] || die "GET returned $n bytes, the object has $size_bytes"
        all+=("$(rate "$size_mib" "$secs")")
        best=$(awk -v a="$best" -v b="${all[-1]}" 'BEGIN { print (b > a ? b : a) }')
    done
    record seq-cold "$label_seq_cold" "$best" MiB/s
    ranged_gets 1 ranged-1m "$label_ranged_1m"
    ranged_gets 16 ranged-16m "$label_ranged_16m"
    note "plain GET: \`curl --aws-sigv4 aws:amz:us-east-1:s3 -o /dev/null URL\`, two runs one after the other: ${all[0]} and ${all[1]} MiB/s (the table shows the faster; curl's own transfer time)"
}

warm_reads() { # FILE: the warm re-reads, each the faster of two (the disk is shared and noisy)
    local v w
    step seq-warm-dropped "$label_warm_dropped"
    drop_caches
    v=$(timed_read "$1")
    drop_caches
    w=$(timed_read "$1")
    note "$target: $label_warm_dropped: $v and $w MiB/s"
    record seq-warm-dropped "$label_warm_dropped" "$(awk -v a="$v" -v b="$w" 'BEGIN { print (a > b ? a : b) }')" MiB/s
    step seq-warm-kept "$label_warm_kept"
    v=$(timed_read "$1")
    w=$(timed_read "$1")
    note "$target: $label_warm_kept: $v and $w MiB/s"
    record seq-warm-kept "$label_warm_kept" "$(awk -v a="$v" -v b="$w" 'BEGIN { print (a > b ? a : b) }')" MiB/s
}

run_local() {
    local f=$work/local/$key
    local v iops ios
    warm_reads "$f"
    step rand-warm "$label_rand_warm"
    drop_caches
    v=$(fio_rand "$f" "$work/local/fio-rand.json")
    read -r iops ios <<<"$v"
    record rand-warm "$label_rand_warm" "$iops" IOPS
}

run_mount() { # the same on stratus and rclone: mount 1 sequential and warm, mounts 2 and 3 cold
    # random
    local kind=fuse v iops ios before after
    [ "$target" = stratus ] && kind=stratus
    step mount "mounting"
    "mount_$target" "$target-1"
    step seq-cold "$label_seq_cold"
    drop_caches
    v=$(timed_read "$mnt/$key")
    record seq-cold "$label_seq_cold" "$v" MiB/s
    if [ "$target" = stratus ]; then
        before=$(stratus_downloaded "$mnt")
        note "stratus: the cold sequential read downloaded $before bytes (\`downloaded\` of the status xattr; the object has $size_bytes)"
    fi
    step verify "checking the SHA-256 of the data read through the mount"
    check_sha "$mnt/$key"
    warm_reads "$mnt/$key"
    step rand-warm "$label_rand_warm"
    drop_caches
    v=$(fio_rand "$mnt/$key" "$work/$target-1/fio-rand.json")
    read -r iops ios <<<"$v"
    record rand-warm "$label_rand_warm" "$iops" IOPS
    if [ "$target" = stratus ]; then
        after=$(stratus_downloaded "$mnt")
        [ "$after" = "$before" ] ||
            note "stratus: the warm re-reads and warm random reads downloaded $((after - before)) more bytes (expected none)"
    else
        note "rclone: after the sequential reads its cache file holds $(rclone_cached) bytes of the object"
    fi
    daemon_notes "mount 1"
    step unmount "unmounting the first mount"
    stop_mount "$kind"

    step mount "mounting again with an empty cache"
    "mount_$target" "$target-2"
    step rand-few "$label_rand_few"
    drop_caches
    v=$(fio_rand "$mnt/$key" "$work/$target-2/fio-rand.json" "$few_reads")
    read -r iops ios <<<"$v"
    record rand-few "$label_rand_few" "$iops" IOPS
    fetched dl-few "$label_dl_few" "$ios"
    daemon_notes "mount 2"
    step unmount "unmounting the second mount"
    stop_mount "$kind"

    step mount "mounting a third time with an empty cache"
    "mount_$target" "$target-3"
    step rand-cold "$label_rand_cold"
    drop_caches
    v=$(fio_rand "$mnt/$key" "$work/$target-3/fio-rand.json")
    read -r iops ios <<<"$v"
    record rand-cold "$label_rand_cold" "$iops" IOPS
    fetched dl-rand-cold "$label_dl" "$ios"
    if [ "$target" = stratus ]; then
        local line
        line=$(stratus_env "$stratus" status "$mnt" 2>/dev/null | grep -E '^(cache|hit ratio):' |
            paste -sd';' - | sed 's/;/; /g' | tr -s ' ' || true)
        note "stratus: \`stratus status\` after the cold ${rand_secs} s random run: \`$line\`"
    fi
    daemon_notes "mount 3"
    step unmount "unmounting the third mount"
    stop_mount "$kind"
}

fetched() { # KEY LABEL READS: records how much of the object the mount fetched for READS reads
    local dl how
    if [ "$target" = stratus ]; then
        dl=$(stratus_downloaded "$mnt") how="\`downloaded\` of the status xattr"
    else
        sleep 1 # its downloaders finish the chunk in flight
        dl=$(rclone_cached) how="blocks allocated to its cache file, 1 s later"
    fi
    record "$1" "$2" "$dl" B
    note "$target: $2: $3 reads of 4 KiB ($(awk -v n="$3" 'BEGIN { printf "%.1f", n * 4096 / 1048576 }') MiB), $(awk -v n="$dl" 'BEGIN { printf "%.1f", n / 1048576 }') MiB fetched ($how)"
}

# ---------------------------------------------------------------------------------------------
# run

say "work dir $work ($(df -PT "$work" | awk 'NR == 2 { print $1 ", " $2 }')); object ${size_label}; targets: $targets"
started=$(now)

step setup "starting moto and putting the object"
if [ $stock_moto -eq 1 ]; then
    TMPDIR=$shm start_moto "$bucket" "$work/moto.log"
else
    TMPDIR=$shm MOTO_RANGED_GETS_IN_PLACE=1 start_moto "$bucket" "$work/moto.log"
fi
url=$moto_endpoint/$bucket/$key
mkdir -p "$work/local"
head -c "$size_bytes" /dev/urandom >"$work/local/$key"
sha=$(sha256sum "$work/local/$key" | cut -d' ' -f1)
t0=$(now)
s3curl -o /dev/null -T "$work/local/$key" "$url" || die "PUT of the object to moto failed"
put_secs=$(since "$t0")
head_size=$(s3curl -I "$url" | tr -d '\r' | awk -F': ' 'tolower($1) == "content-length" { print $2 }')
[ "$head_size" = "$size_bytes" ] || die "moto holds $head_size bytes at $key after the PUT, expected $size_bytes"

printf '%-8s  %-52s  %14s\n' target workload result
printf '%-8s  %-52s  %14s\n' -------- ---------------------------------------------------- --------------
for target in $targets; do
    daemon_pid=
    (
        set -e
        case "$target" in
            get) run_get ;;
            local) run_local ;;
            stratus | rclone) run_mount ;;
        esac
    ) &
    worker=$!
    set +e
    wait "$worker"
    rc=$?
    set -e
    worker=
    if [ $rc -ne 0 ]; then
        IFS=$'\t' read -r k label <"$work/step" || true
        say "$target FAILED during: $label"
        printf '%s\t%s\n' "$target" "$label" >>"$work/failed"
        printf '%s\t%s\t%s\tfailed\t\n' "$target" "$k" "$label" >>"$work/results"
        note "**$target failed** during \"$label\" (exit $rc); its remaining figures are missing"
        [ -n "$logs_kept" ] || logs_kept=$(mktemp -d /tmp/stratus-bench-cache-logs.XXXXXX)
        mkdir -p "$logs_kept/$target"
        find "$work" -maxdepth 3 \( -name '*.log' -o -name '*.out' -o -name 'fio-*.json' \) \
            -not -path '*/mnt/*' -exec cp --backup=numbered {} "$logs_kept/$target/" \; 2>/dev/null || true
        unmount_registered
    fi
done
if [ -r "/proc/$moto_pid/status" ]; then
    moto_rss=$(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$moto_pid/status")
fi
total=$(since "$started")

# ---------------------------------------------------------------------------------------------
# report

fmt_put=$(rate "$size_mib" "$put_secs")
{
    printf 'command\t%s\n' "$command_line"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'quick\t%s\n' "$quick"
    printf 'workdir\t%s\n' "$work"
    printf 'size\t%s\n' "$size_label"
    [ -z "$notes_file" ] || printf 'notes_file\t%s\n' "$notes_file"
    printf 'v_stratus\t%s\n' "$(stratus_version)"
    printf 'v_rclone\t%s\n' "$([ -z "$rclone_bin" ] || "$rclone_bin" version 2>/dev/null | head -1)"
    printf 'v_curl\t%s\n' "$(curl --version | head -1 | cut -d' ' -f1-2)"
    printf 'v_fio\t%s\n' "$(fio --version)"
    printf 'v_moto\t%s\n' "$(python3 -c 'import moto; print(moto.__version__)')"
    printf 'v_python\t%s\n' "$(python3 -c 'import platform; print(platform.python_version())')"
    printf 'workload\tthe object: %s from /dev/urandom, put with one `curl --aws-sigv4 -T` (%s MiB/s), its SHA-256 kept to check every cold read; a copy stays on the local disk\n' "$size_label" "$fmt_put"
    if [ $stock_moto -eq 1 ]; then
        printf 'workload\tthe server: one moto process (`scripts/moto_server.py`, stock ranged GETs: each reads the whole object) keeping the object under /dev/shm, so that dropping the page cache empties only the client side\n'
    else
        printf 'workload\tthe server: one moto process (`scripts/moto_server.py` with `MOTO_RANGED_GETS_IN_PLACE=1`: a ranged GET reads only its range, as on S3; stock moto reads the whole object for each, ~0.5 s per GET of a 1 GiB object) keeping the object under /dev/shm, so that dropping the page cache empties only the client side\n'
    fi
    printf 'workload\tplain GET: `curl --aws-sigv4 -o /dev/null` of the whole object, twice; the faster counts. Ranged GETs: one `curl --parallel --parallel-max 8 -K LIST` fetching the whole object as consecutive ranges of 1 MiB (stratus'"'"'s block size) or 16 MiB, timed from start to exit\n'
    printf 'workload\tstratus: `stratus mount s3://%s MNT --state-dir STATE --cache-size %s` (other defaults of this build: `%s`), a fresh state dir per mount\n' \
        "$bucket" "$cache_size" "$(stratus_defaults | sed "s/--cache-size [^ ]* *//")"
    printf 'workload\trclone: %s, a fresh `--cache-dir` per mount\n' "$rclone_mount_note"
    printf 'workload\tsequential reads: `dd if=FILE of=/dev/null bs=1M`, timed from start to exit. Cold: on a fresh mount after `sync; echo 3 > /proc/sys/vm/drop_caches`, then `sha256sum` through the mount (untimed) must match. Warm, page cache dropped: the same file, caches dropped again, so the mount serves it from its own disk cache; warm, page cache kept: read once more at once, what a program re-opening the file sees. Each warm figure is the faster of two runs (both in the notes). The local disk column reads the local copy the same two ways\n'
    printf 'workload\trandom reads: `fio --rw=randread --bs=4k --size=%sM --time_based --runtime=%s --ioengine=psync --readonly` (buffered, fio'"'"'s default seed, so every target reads the same offsets). Warm: on the first mount after the sequential reads, page cache dropped first (the local disk column: the local copy, page cache dropped). Cold, first %s reads: the same with `--number_ios=%s` instead of a run time, on a second mount with an empty cache, page cache dropped first; cold, %s s: on a third such mount. What each cold run fetched: stratus'"'"'s `downloaded` counter (status xattr), the blocks allocated to rclone'"'"'s cache file\n' "$size_mib" "$rand_secs" "$few_reads" "$few_reads" "$rand_secs"
} >>"$work/meta"
{
    printf 'one run of each workload: differences under ~10%% are noise on this machine\n'
    printf 'load average (1, 5, 15 min) at the start %s, at the end %s, on %s cores%s\n' "$load_start" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" \
        "$(awk -v l="${load_start%% *}" 'BEGIN { if (l > 1.0) print ": the machine was not idle, so the figures are noisy" }')"
    printf 'the whole run took %s s (putting the object included)\n' "$(printf '%.0f' "$total")"
    cat "$work/notes"
    [ -z "${moto_rss:-}" ] || printf 'moto: peak RSS %s\n' "$moto_rss"
} | sed 's/^/note\t/' >>"$work/meta"

$tools cache-report --results "$work/results" --meta "$work/meta" --out "$out"
say "report written to $out (between the bench-cache markers)"
if [ -s "$work/failed" ]; then
    say "failed targets: $(cut -f1 "$work/failed" | tr '\n' ' ')"
    exit 1
fi

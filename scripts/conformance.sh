#!/usr/bin/env bash
# Runs external conformance suites against any mount point and prints one summary line per
# suite: pjdfstest, an fsx-style random exerciser, fio verify jobs, and real programs (tar,
# git, sqlite, an editor-style save).
#
#   scripts/conformance.sh [--quick] [--peer] MOUNTPOINT
#
# --quick  short runs (what CI uses)
# --peer   the mount is not stratus (a local directory, bindfs, rclone): run pjdfstest without
#          our expected-failure list, and report instead of failing
#
# pjdfstest switches to other users: mount stratus with `-o allow_other` (without it only the
# mounting user may enter, root included), on a path other users can reach.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
quick=0
peer=0
while [ $# -gt 1 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --peer) peer=1 ;;
        *) echo "usage: $0 [--quick] [--peer] MOUNTPOINT" >&2; exit 2 ;;
    esac
    shift
done
[ $# -eq 1 ] || { echo "usage: $0 [--quick] [--peer] MOUNTPOINT" >&2; exit 2; }
mnt=$(cd "$1" && pwd)
if [ $peer -eq 0 ] && ! setpriv --reuid=65534 --regid=65534 --clear-groups -- stat "$mnt" >/dev/null 2>&1; then
    echo "conformance: other users cannot reach $mnt, and pjdfstest switches to them: mount it with -o allow_other on a path they can reach" >&2
    exit 2
fi
failures=0
passed=0
say() { printf '%s\n' "$*"; }

ensure_tools() {
    # pjdfstest, fio, git and the users pjdfstest switches to.
    "$here/scripts/setup.sh" >/dev/null
}

result() { # name, status, detail
    if [ "$2" = ok ]; then
        passed=$((passed + 1))
    else
        failures=$((failures + 1))
    fi
    say "$1: $2${3:+ ($3)}"
}

run_pjdfstest() {
    local cfg="$here/conformance/pjdfstest.toml"
    [ $peer -eq 1 ] && cfg="$here/conformance/pjdfstest-peer.toml"
    local second
    second=$(mktemp -d /dev/shm/pjdfstest-second.XXXXXX)
    local work="$mnt/pjdfstest"
    mkdir -p "$work"
    local out
    out=$(mktemp)
    (cd "$work" && pjdfstest -c "$cfg" -p "$work" -s "$second") >"$out" 2>&1 || true
    rm -rf "$second"
    local summary
    summary=$(grep -E '^Summary:' "$out" | tail -1)
    local unexpected
    unexpected=$(grep -cE 'FAILED$|PASSED UNEXPECTEDLY' "$out" || true)
    if [ -z "$summary" ]; then
        result pjdfstest FAILED "no summary; see $out"
    elif [ $peer -eq 1 ]; then
        say "pjdfstest: report (${summary#Summary: })"
        rm -f "$out"
    elif [ "$unexpected" -eq 0 ]; then
        result pjdfstest ok "${summary#Summary: }"
        rm -f "$out"
    else
        grep -E 'FAILED$|PASSED UNEXPECTEDLY' "$out" | head -20 | sed 's/^/  /'
        result pjdfstest FAILED "${summary#Summary: }; $unexpected unexpected; log $out"
    fi
    rm -rf "$work" 2>/dev/null || true
}

run_fsx() {
    local ops=20000 seeds="1 2 3 4"
    [ $quick -eq 1 ] && ops=3000 seeds="1 2"
    mkdir -p "$mnt/fsx"
    local s
    for s in $seeds; do
        if ! python3 "$here/scripts/fsx.py" "$mnt/fsx" --ops "$ops" --seed "$s" >/dev/null; then
            result fsx FAILED "seed $s; rerun: scripts/fsx.py DIR --ops $ops --seed $s"
            return
        fi
    done
    rm -rf "$mnt/fsx"
    result fsx ok "$ops ops x seeds $seeds"
}

run_fio() {
    local size=256M
    [ $quick -eq 1 ] && size=16M
    mkdir -p "$mnt/fio"
    local job
    for job in "write:64k" "randwrite:4k" "readwrite:16k"; do
        local rw=${job%%:*} bs=${job##*:}
        if ! fio --name="verify-$rw" --directory="$mnt/fio" --rw="$rw" --bs="$bs" --size="$size" \
            --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --ioengine=psync --end_fsync=1 \
            --output=/dev/null >/dev/null 2>&1; then
            result fio FAILED "$rw bs=$bs size=$size"
            return
        fi
    done
    rm -rf "$mnt/fio"
    result fio ok "write, randwrite, readwrite with crc32c verify, $size each"
}

run_programs() {
    local work="$mnt/programs"
    mkdir -p "$work"
    # A real source tarball: a .crate from the cargo registry is a tar.gz.
    local crate
    crate=$(ls -S "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/*.crate 2>/dev/null | head -1 || true)
    if [ -n "$crate" ]; then
        local ref
        ref=$(mktemp -d)
        tar -xzf "$crate" -C "$ref"
        mkdir -p "$work/src"
        if tar -xzf "$crate" -C "$work/src" && diff -r "$ref" "$work/src" >/dev/null; then
            result tar ok "$(basename "$crate"), $(find "$ref" -type f | wc -l) files"
        else
            result tar FAILED "$(basename "$crate") extracted differently"
        fi
        rm -rf "$ref"
    else
        result tar FAILED "no .crate file in the cargo registry cache"
    fi
    if (cd "$work" && git init -q repo && cp -r "$work/src/." repo/ 2>/dev/null; cd repo &&
        echo "hello" >README && git add -A && git -c user.email=t@t -c user.name=t commit -q -m one &&
        echo "more" >>README && git -c user.email=t@t -c user.name=t commit -q -am two &&
        git fsck --full --strict >/dev/null 2>&1 && [ "$(git rev-list --count HEAD)" = 2 ]); then
        result git ok "init, add -A, 2 commits, fsck --full"
    else
        result git FAILED "init/add/commit/fsck"
    fi
    if python3 - "$work/db.sqlite" <<'EOF'
import sqlite3, sys
p = sys.argv[1]
c = sqlite3.connect(p)
c.execute("create table t (id integer primary key, v text)")
with c:
    c.executemany("insert into t (v) values (?)", [(f"row {i}" * 10,) for i in range(5000)])
c.close()
c = sqlite3.connect(p)
assert c.execute("select count(*) from t").fetchone()[0] == 5000
assert c.execute("pragma integrity_check").fetchone()[0] == "ok"
c.close()
EOF
    then
        result sqlite ok "create, 5000 inserts, reopen, integrity_check"
    else
        result sqlite FAILED "create/insert/query"
    fi
    if python3 - "$work/doc.txt" <<'EOF'
import os, sys
p = sys.argv[1]
for i in range(30):
    tmp = p + ".swp"
    with open(tmp, "w") as f:
        f.write(f"version {i}\n" * 100)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, p)
assert open(p).read() == "version 29\n" * 100
assert not os.path.exists(p + ".swp")
EOF
    then
        result editor-save ok "30 x write temp, fsync, rename over"
    else
        result editor-save FAILED "write temp, fsync, rename over"
    fi
    rm -rf "$work"
}

ensure_tools
run_pjdfstest
run_fsx
run_fio
run_programs
say "conformance: $passed passed, $failures failed"
[ $failures -eq 0 ] || [ $peer -eq 1 ]

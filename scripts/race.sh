#!/usr/bin/env bash
# The race test (tests/race.rs) for longer than `cargo test` runs it: two mounts of one remote
# and a direct client write, rename and delete the same paths at once, files over the multipart
# threshold included, and every version a writer was told is saved must be in the remote
# afterwards, with both mounts showing exactly what the remote holds.
#
#   scripts/race.sh [SEEDS] [ROUNDS] [BACKEND]
#
# SEEDS (default 10) runs of ROUNDS rounds each (default 8), seeds 1..SEEDS, on BACKEND
# (local, s3, azure or gcs; default all four). Prints one line per run and stops at the first
# failure, whose output (the seed, the operation log and both daemons' log tails) is kept
# in /tmp/stratus-race-SEED-BACKEND.log.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-10}
rounds=${2:-8}
backends=${3:-local s3 azure gcs}
unset AWS_CA_BUNDLE || true
cargo test --quiet --test race --no-run
for seed in $(seq 1 "$seeds"); do
    for b in $backends; do
        log=/tmp/stratus-race-$seed-$b.log
        if STRATUS_RACE_SEED=$seed STRATUS_RACE_ROUNDS=$rounds \
            cargo test --quiet --test race -- --exact \
            "writers_racing_on_the_same_paths_lose_no_saved_version::$b" >"$log" 2>&1; then
            echo "race: seed $seed, $rounds rounds, $b: ok"
            rm -f "$log"
        else
            echo "race: seed $seed, $rounds rounds, $b: FAILED (see $log)"
            exit 1
        fi
    done
done
echo "race: $seeds seeds x $rounds rounds on $backends: no saved version lost"

#!/usr/bin/env bash
# The sync engine against its model (tests/sync_model.rs) for longer than `cargo test` runs
# it: proptest draws windows of operations on two mounts, direct remote edits, offline
# toggles and SIGKILLs with remounts, and checks every drain against a model that keeps every
# acknowledged version. A failure prints the seed and the shrunk sequence.
#
#   scripts/model.sh [CASES] [BACKEND] [SEED]
#
# CASES per backend (default 500), BACKEND local, s3, azure or gcs (default all four), SEED the
# proptest seed (default: from the clock; printed). About 0.7 s a case on a local folder,
# 1.5-4 s on moto, Azurite or the GCS test server.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-500}
backends=${2:-local s3 azure gcs}
seed=${3:-$(date +%s)}
unset AWS_CA_BUNDLE || true
cargo test --quiet --test sync_model --no-run
for b in $backends; do
    echo "model: $cases cases on $b, STRATUS_MODEL_SEED=$seed"
    STRATUS_MODEL_CASES=$cases STRATUS_MODEL_SEED=$seed \
        cargo test --quiet --test sync_model -- --exact \
        "the_sync_engine_agrees_with_its_model::$b"
done
echo "model: $cases cases per backend on $backends agree with the model"

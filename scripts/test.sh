#!/usr/bin/env bash
# The whole test suite: installs what the tests need (fuse3, attr, moto), then runs every
# unit and real-mount test. Tests start their own moto S3 server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# rclone and friends fail when AWS_CA_BUNDLE is set; our tests speak plain HTTP to moto.
unset AWS_CA_BUNDLE || true
exec cargo test --all-targets -- --test-threads=4 "$@"

#!/usr/bin/env bash
# The test command of README.md: every unit, property and integration test of the workspace,
# plus one pass of each criterion benchmark in test mode (a build-and-run check, never timed).
set -euo pipefail
cd "$(dirname "$0")/.."
# System tools the namespace tests need (nftables, iproute2, ...), installed when missing.
scripts/install-test-deps.sh
# The C SDK's static library, which the conformance suite links its C example against.
cargo build -p yorker-client-c --locked
# Property tests run a bounded number of cases (PROPTEST_CASES caps them if set).
cargo test --workspace --all-targets --locked "$@"

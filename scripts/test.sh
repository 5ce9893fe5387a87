#!/usr/bin/env bash
# Runs every test suite (ctest) against ./build. Run scripts/setup.sh first.
# Tests use real loop devices, mounts and FUSE, so they run one at a time, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ctest --test-dir build --output-on-failure --timeout 1200 "$@"

#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) and builds everything into ./build.
# Usage: scripts/setup.sh [--bench]     (--bench also installs casync and borg)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh "$@"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"

#!/usr/bin/env bash
# Installs, with apt-get, every Debian 12 package that the build, the tests and the
# benchmarks need. The lists live in scripts/deps/*.txt (one package per line, '#'
# comments): core.txt for the build and tests, bench.txt for bench/ only.
# Usage (as root; idempotent):  scripts/install-deps.sh [--bench]
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (apt-get needs it)" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)

lists=()
for f in "$here"/deps/*.txt; do
  case "$(basename "$f")" in
    bench.txt) [ "${1:-}" = "--bench" ] && lists+=("$f") ;;
    *) lists+=("$f") ;;
  esac
done

# A line "pkg [amd64 arm64]" names the architectures that have the package; elsewhere
# it is skipped.
arch=$(dpkg --print-architecture)
mapfile -t packages < <(sed -e 's/#.*//' "${lists[@]}" | awk -v arch="$arch" '
  NF == 0 { next }
  {
    if (match($0, /\[[^]]*\]/)) {
      archs = " " substr($0, RSTART + 1, RLENGTH - 2) " "
      if (index(archs, " " arch " ") == 0) next
    }
    print $1
  }' | sort -u)

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"

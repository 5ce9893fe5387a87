#!/usr/bin/env bash
# Installs, with apt-get, the Debian 12 packages of scripts/deps/*.txt (one package per
# line, '#' comments; "pkg [amd64 arm64]" names the only architectures that have it):
#   build.txt    compiling the shipped binaries (the Dockerfile's build stage)
#   runtime.txt  what the binaries need at run time (the Dockerfile's runtime stage)
#   test.txt     tests, fuzzing and CI tools
#   bench.txt    the tools bench/ compares with (only with --bench)
# By default it installs build, runtime and test, then helm and kubectl
# (scripts/install-helm.sh): everything CI needs.
#
# Usage (as root; idempotent):
#   scripts/install-deps.sh [--bench]          everything CI needs (and bench.txt)
#   scripts/install-deps.sh --only NAME...     only scripts/deps/NAME.txt (repeatable)
#   scripts/install-deps.sh --print [...]      print the package names for this machine's
#                                              architecture, one a line; install nothing
set -euo pipefail

die() { echo "install-deps.sh: $*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)

bench=0
print=0
only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) bench=1 ;;
    --print) print=1 ;;
    --only)
      [ $# -ge 2 ] || die "--only needs a list name (build, runtime, test, bench)"
      only+=("$2")
      shift ;;
    *) die "unknown argument '$1' (usage: install-deps.sh [--bench] [--only NAME]... [--print])" ;;
  esac
  shift
done

lists=()
if [ ${#only[@]} -gt 0 ]; then
  for name in "${only[@]}"; do
    case "$name" in
      */* | "" | .*) die "--only $name: give a list name such as 'runtime', not a path" ;;
    esac
    [ -f "$here/deps/$name.txt" ] || die "--only $name: there is no scripts/deps/$name.txt"
    lists+=("$here/deps/$name.txt")
  done
else
  lists=("$here/deps/build.txt" "$here/deps/runtime.txt" "$here/deps/test.txt")
  [ "$bench" -eq 1 ] && lists+=("$here/deps/bench.txt")
fi

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
[ ${#packages[@]} -gt 0 ] || die "no packages in ${lists[*]}"

if [ "$print" -eq 1 ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get needs it)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"

# helm and kubectl are not Debian packages; the chart tests need them.
if [ ${#only[@]} -eq 0 ]; then
  "$here/install-helm.sh"
fi

#!/usr/bin/env bash
# stage-runtime.sh: the container image's own files, the project's binaries, stripped.
#
# Usage: scripts/stage-runtime.sh BUILD_DIR OUT_DIR BINARY...
#   BUILD_DIR  a CMake build directory holding the built binaries
#   OUT_DIR    created (must not exist or be empty); gets usr/local/bin/BINARY for each
#              BINARY, stripped of symbols and debug information (strip --strip-all)
#   BINARY     the executables to stage, by file name
#
# Everything else the binaries load comes from Debian packages (scripts/deps/runtime.txt):
# the Dockerfile's runtime stage installs those, then copies OUT_DIR to /.
# tests/deploy/test_runtime_image.py stages the same way into a debootstrapped Debian 12.
set -euo pipefail

die() { echo "stage-runtime.sh: $*" >&2; exit 1; }

[ $# -ge 3 ] || die "usage: stage-runtime.sh BUILD_DIR OUT_DIR BINARY..."
build_dir=$1
out_dir=$2
shift 2

[ -d "$build_dir" ] || die "build directory $build_dir does not exist"
if [ -e "$out_dir" ] && [ -n "$(ls -A "$out_dir" 2>/dev/null)" ]; then
  die "output directory $out_dir exists and is not empty; refusing to mix file sets"
fi
command -v strip >/dev/null || die "strip not found (Debian package binutils)"

bin_dir="$out_dir/usr/local/bin"
mkdir -p "$bin_dir"
for name in "$@"; do
  case "$name" in
    */* | "" | .*) die "binary name '$name' must be a plain file name" ;;
  esac
  # The binary is the one executable regular file of that name in the build tree.
  mapfile -t found < <(find "$build_dir" -path '*/CMakeFiles' -prune -o \
                         -type f -name "$name" -perm -u+x -print)
  [ ${#found[@]} -ge 1 ] || die "binary '$name' not found under $build_dir (not built?)"
  [ ${#found[@]} -eq 1 ] || die "binary '$name' found ${#found[@]} times under $build_dir: ${found[*]}"
  src=${found[0]}
  head -c 4 "$src" | grep -q 'ELF' || die "$src is not an ELF binary"
  strip --strip-all -o "$bin_dir/$name" "$src" || die "strip failed on $src"
  chmod 0755 "$bin_dir/$name"
done
echo "stage-runtime.sh: staged $* ($(du -sh "$bin_dir" | cut -f1)) in $bin_dir"

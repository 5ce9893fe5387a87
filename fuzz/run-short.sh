#!/usr/bin/env bash
# Builds the libFuzzer targets with clang++ and runs each for FUZZ_SECONDS (default 30).
# Usage: fuzz/run-short.sh [BUILD_DIR]     (exit status non-zero on any finding)
# Needs Debian's clang and libclang-rt-14-dev (scripts/deps/test.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build-fuzz}
seconds=${FUZZ_SECONDS:-30}
command -v clang++ >/dev/null || { echo "run-short.sh: clang++ not installed" >&2; exit 1; }
cmake -S "$here" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 >/dev/null
status=0
for t in fuzz_vhost_user_messages fuzz_virtqueue fuzz_readahead; do
  corpus="$build/corpus-$t"
  mkdir -p "$corpus"
  seeds=()  # hand-made inputs for paths random mutation rarely finds (fuzz/seeds/<target>)
  [ -d "$here/seeds/$t" ] && seeds=("$here/seeds/$t")
  echo "== $t: ${seconds}s"
  if ! "$build/$t" -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=2048 -timeout=10 \
       -artifact_prefix="$build/$t-" -print_final_stats=1 "$corpus" "${seeds[@]}" > "$build/$t.log" 2>&1; then
    echo "$t: FAILED (log: $build/$t.log)"
    tail -40 "$build/$t.log"
    status=1
  else
    grep -E 'stat::number_of_executed_units|cov:' "$build/$t.log" | tail -2
  fi
done
exit $status

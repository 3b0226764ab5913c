#!/usr/bin/env bash
# Runs a libFuzzer target for a bounded time; the ctest entry of a fuzz target.
#   run_fuzz.sh SOURCE_DIR TARGET SECONDS SEED_DIR
# The binary comes from $SHALE_FUZZ_BUILD_DIR (set by scripts/test after `scripts/build --fuzz`),
# else it is built now with `scripts/build --fuzz` (incremental). Exit 77 (ctest: SKIP) only
# when clang or its libFuzzer runtime is not installed; a crash or a violated invariant fails.
set -euo pipefail
src=$1
target=$2
seconds=$3
seeds=$4

probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if ! command -v clang++ >/dev/null 2>&1; then
  echo "SKIP: clang++ is not installed (apt-get install clang libclang-rt-14-dev)"
  exit 77
fi
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
  > "$probe/probe.cc"
if ! clang++ -fsanitize=fuzzer "$probe/probe.cc" -o "$probe/probe" >"$probe/log" 2>&1; then
  echo "SKIP: clang++ cannot link libFuzzer (apt-get install libclang-rt-14-dev):"
  cat "$probe/log"
  exit 77
fi

if [ -n "${SHALE_FUZZ_BUILD_DIR:-}" ]; then
  dir=$SHALE_FUZZ_BUILD_DIR
else
  echo "building the fuzz targets: $src/scripts/build --fuzz"
  dir=$src/$("$src/scripts/build" --fuzz | tail -n 1)
fi
bin=$dir/bin/$target
if [ ! -x "$bin" ]; then
  echo "FAIL: $bin was not built"
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$probe" "$work"' EXIT
mkdir -p "$work/corpus" "$work/artifacts"
echo "fuzzing $target for ${seconds}s (seeds: $seeds)"
if ! "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
     -artifact_prefix="$work/artifacts/" "$work/corpus" "$seeds" 2>"$work/log"; then
  tail -n 60 "$work/log"
  for crash in "$work"/artifacts/*; do
    [ -e "$crash" ] || continue
    kept=/tmp/$target-$(basename "$crash")
    cp "$crash" "$kept"
    echo "crashing input kept in $kept (replay: $bin $kept)"
  done
  exit 1
fi
grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|Done)" "$work/log" || true
tail -n 3 "$work/log"

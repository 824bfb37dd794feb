#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with a CUDA GPU and no network
# (Python 3.12, torch 2.11, Triton 3.6, nvcc 13, pytest-benchmark preinstalled):
#
#   bash bench/device_check.sh RESULTS_DIR
#
# 1. GPU identity (nvidia-smi), 2. build and install this checkout (pip, no build isolation, no
# deps: nothing is downloaded), 3. python -m sgfd_fast.info, 4. the cuda-marked tests,
# 5./6. the benchmarks at --bench-size paper and large (JSON and logs into RESULTS_DIR),
# 7. a short speedup table, printed last.
#
# Every step runs under `timeout`, and the steps share one budget (SGFD_FAST_CHECK_BUDGET seconds,
# default 450) so the script ends in under 8 minutes on an H100 even when a step hangs; a step that
# runs out of time is interrupted (pytest still writes the benchmarks finished so far). Python runs
# with -P so the installed package is imported, not the source tree. Exit status: 0 when every
# step passed, else 1.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash bench/device_check.sh RESULTS_DIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
RESULTS=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${SGFD_FAST_CHECK_BUDGET:-450}
STATUS=()
FAILED=0
export PYTHONUNBUFFERED=1

# run_step NAME LIMIT_S LOGFILE CMD...: run CMD under the smaller of LIMIT_S and what is left of
# the budget, teeing its output to LOGFILE ("-" for none).
run_step() {
  local name=$1 limit=$2 log=$3 t0 left rc
  shift 3
  t0=$(date +%s)
  left=$(( BUDGET - (t0 - START) ))
  if (( left < 20 )); then
    STATUS+=("$(printf '%-16s skipped: the %ss budget is spent' "$name" "$BUDGET")")
    FAILED=1
    return 1
  fi
  (( limit > left )) && limit=$left
  echo
  echo "=== $name (limit ${limit}s, at +$(( t0 - START ))s)"
  if [ "$log" = "-" ]; then
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    rc=$?
  else
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  local note=ok
  if (( rc == 124 || rc == 137 )); then note="TIMED OUT"; elif (( rc != 0 )); then note=FAILED; fi
  (( rc != 0 )) && FAILED=1
  STATUS+=("$(printf '%-16s %-9s rc=%-3s %4ss' "$name" "$note" "$rc" "$(( $(date +%s) - t0 ))")")
  return $rc
}

run_step identity 20 "$RESULTS/identity.txt" \
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv

# sm_90 only (H100/H200) halves the CUDA compile time; a failed build is an error, not a fallback.
run_step build 170 "$RESULTS/build.log" \
  env SGFD_FAST_REQUIRE_EXTENSION=1 SGFD_FAST_CUDA=1 SGFD_FAST_CUDA_ARCHS="${SGFD_FAST_CUDA_ARCHS:-90}" \
  "$PY" -m pip install --no-build-isolation --no-deps --no-input .

run_step info 30 - "$PY" -P -m sgfd_fast.info

run_step cuda-tests 75 "$RESULTS/cuda_tests.log" \
  "$PY" -P -m pytest -m cuda tests/ -q -p no:cacheprovider

# Benchmarks: short rounds (GPU calls take microseconds to milliseconds); torch.compile time is
# spent in the warm-up, outside the numbers.
BENCH_OPTS=(-q -p no:cacheprovider --benchmark-max-time=0.2 --benchmark-min-rounds=5
            --benchmark-columns=min,median,max,rounds --benchmark-sort=name)
run_step bench-paper 140 "$RESULTS/bench_paper.log" \
  "$PY" -P -m pytest bench/ --bench-size paper "${BENCH_OPTS[@]}" \
  --benchmark-json "$RESULTS/bench_paper.json"
run_step bench-large 120 "$RESULTS/bench_large.log" \
  "$PY" -P -m pytest bench/ --bench-size large "${BENCH_OPTS[@]}" \
  --benchmark-json "$RESULTS/bench_large.json"

echo
echo "=== steps (total $(( $(date +%s) - START ))s)"
printf '%s\n' "${STATUS[@]}"
echo
echo "=== speedups of sgfd_fast (median of the other provider / median of sgfd_fast)"
shopt -s nullglob
jsons=("$RESULTS"/bench_*.json)
if (( ${#jsons[@]} )); then
  "$PY" bench/report.py "${jsons[@]}" --markdown > "$RESULTS/report.md" || FAILED=1
  "$PY" bench/report.py "${jsons[@]}" --png "$RESULTS/speedups.png" || FAILED=1
else
  echo "no benchmark JSON was written"
  FAILED=1
fi
exit $FAILED

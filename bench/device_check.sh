#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with a CUDA GPU and no network
# (Python 3.12, torch 2.11, Triton 3.6, nvcc 13, pytest-benchmark preinstalled):
#
#   bash bench/device_check.sh RESULTS_DIR
#
# 1. GPU identity (nvidia-smi), 2. build and install this checkout (pip, no build isolation, no
# deps: nothing is downloaded), 3. python -m sgfd_fast.info, 4. the cuda-marked tests,
# 5./6. the op benchmarks at --bench-size paper and large, 7. the end-to-end benchmarks (epoch
# and evaluation of every model, paper size) — JSON and logs into RESULTS_DIR — and 8. a short
# speedup table, printed last (RESULTS_DIR/report.md holds the markdown tables).
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
# Eight files at most come back from a lent machine's output folder: keep to that many.
rm -f "$RESULTS"/{build.log,cuda_tests.log,bench.log,report.md,speedups.png} \
  "$RESULTS"/bench_{paper,large,e2e}.json

# run_step NAME LIMIT_S LOGFILE CMD...: run CMD under the smaller of LIMIT_S and what is left of
# the budget, appending its output to LOGFILE ("-" for none).
run_step() {
  local name=$1 limit=$2 log=$3 t0 left rc note
  shift 3
  t0=$(date +%s)
  left=$(( BUDGET - (t0 - START) ))
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then
    STATUS+=("$(printf '%-34s skipped: out of time (budget %ss)' "$name" "$BUDGET")")
    FAILED=1
    return 1
  fi
  echo
  echo "=== $name (limit ${limit}s, at +$(( t0 - START ))s)"
  if [ "$log" = "-" ]; then
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    rc=$?
  else
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
  fi
  note=ok
  if (( rc == 124 || rc == 137 )); then note="TIMED OUT"; elif (( rc != 0 )); then note=FAILED; fi
  (( rc != 0 )) && FAILED=1
  STATUS+=("$(printf '%-34s %-9s rc=%-3s %4ss' "$name" "$note" "$rc" "$(( $(date +%s) - t0 ))")")
  return $rc
}

run_step identity 20 - \
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv

# sm_90 only (H100/H200) halves the CUDA compile time; a failed build is an error, not a fallback.
run_step build 150 "$RESULTS/build.log" \
  env SGFD_FAST_REQUIRE_EXTENSION=1 SGFD_FAST_CUDA=1 SGFD_FAST_CUDA_ARCHS="${SGFD_FAST_CUDA_ARCHS:-90}" \
  "$PY" -m pip install --no-build-isolation --no-deps --no-input .

run_step info 30 - "$PY" -P -m sgfd_fast.info

run_step cuda-tests 60 "$RESULTS/cuda_tests.log" \
  "$PY" -P -m pytest -m cuda tests/ -q -p no:cacheprovider

# Benchmarks: short rounds (GPU calls take microseconds to milliseconds); torch.compile time is
# spent in the warm-up, outside the numbers, but it is long: the `compiled` provider runs at the
# paper size only (at large sizes every reference would be compiled again for the new shapes).
# SGFD_FAST_BENCH_PARTIAL makes every finished benchmark append a line to a JSONL file, so a set
# killed at its limit still reports what it finished (report.py reads .jsonl too).
BENCH_OPTS=(-q -p no:cacheprovider --benchmark-max-time=0.2 --benchmark-min-rounds=5
            --benchmark-columns=min,median,max,rounds --benchmark-sort=name)

# bench_set NAME LIMIT_S PYTEST_ARGS...: writes $RESULTS/bench_NAME.json (or .jsonl if killed)
bench_set() {
  local name=$1 limit=$2
  shift 2
  rm -f "$RESULTS/bench_$name.jsonl"
  SGFD_FAST_BENCH_PARTIAL="$RESULTS/bench_$name.jsonl" run_step "bench-$name" "$limit" \
    "$RESULTS/bench.log" "$PY" -P -m pytest "$@" "${BENCH_OPTS[@]}" \
    --benchmark-json "$RESULTS/bench_$name.json"
  [ -s "$RESULTS/bench_$name.json" ] && rm -f "$RESULTS/bench_$name.jsonl"
}

bench_set paper 110 bench/ --bench-size paper --ignore=bench/bench_end_to_end.py
bench_set large 90 bench/ --bench-size large --ignore=bench/bench_end_to_end.py -k "not compiled"
bench_set e2e 90 bench/bench_end_to_end.py --bench-size paper

echo
echo "=== steps (total $(( $(date +%s) - START ))s)"
printf '%s\n' "${STATUS[@]}"
echo
echo "=== speedups of sgfd_fast (median of the other provider / median of sgfd_fast)"
shopt -s nullglob
jsons=("$RESULTS"/bench_*.json "$RESULTS"/bench_*.jsonl)
if (( ${#jsons[@]} )); then
  "$PY" bench/report.py "${jsons[@]}" --markdown > "$RESULTS/report.md" || FAILED=1
  "$PY" bench/report.py "${jsons[@]}" --png "$RESULTS/speedups.png" || FAILED=1
else
  echo "no benchmark JSON was written"
  FAILED=1
fi
exit $FAILED

#!/usr/bin/env bash
# The whole first GPU check in one command of at most 570 s, for a lent machine with a CUDA GPU
# and no network (Python 3.12, torch, Triton 3.6, nvcc, cmake, ninja, pybind11, setuptools,
# pytest, pytest-benchmark preinstalled) that gives back only the files under OUTDIR:
#
#   bash bench/device_check.sh OUTDIR            # on the GPU machine
#   bash bench/device_check.sh --dry-run OUTDIR  # the rehearsal on a CPU (.ci/run runs it)
#
# Steps, each under its own time limit and all under one budget (SGFD_FAST_CHECK_BUDGET, 540 s;
# the dry run multiplies every limit by 3 for a slow CPU); each writes its file into OUTDIR as it
# finishes (logs grow while it runs):
#   preflight.txt        GPU (nvidia-smi), nvcc, Python headers, the CUDA static runtime,
#                        setuptools/pybind11/triton/pytest-benchmark, torch's CUDA
#   build.log            pip install (offline, no build isolation, sm_90 only); if the CUDA build
#                        fails, again with SGFD_FAST_CUDA=0 so the Triton rows still come
#   cuda_tests.log       the cuda-marked tests, one pytest per file (an import error costs that
#                        file only), the CUDA C++ ops' files first, all in parallel
#   bench_ops.json       op benchmarks at --bench-size paper, providers reference and sgfd_fast
#   bench_e2e.json       BM3 and GRCN end to end on toysgames-synthetic (epoch and evaluation)
#   bench_attentive.json the attentive kernel (MAML's evaluation), last: the most expensive
#   bench.log            the benchmark runs' output
#   report.md            the steps' status and the speedup tables, printed last
# A benchmark step cut at its limit leaves bench_*.jsonl (one line per finished benchmark) instead
# of its .json: never more than 8 files, none in a subfolder. The dry run does every step on the
# CPU at tiny sizes (no install: the installed build is used; the cuda tests are only collected)
# and then checks that every expected file landed in OUTDIR. Exit status 0 when every step
# passed, else 1; 2 on bad usage.
set -uo pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: bash bench/device_check.sh [--dry-run] OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
START=$(date +%s)
# the dry run's CPU (a loaded 2-core CI box, say) is slower than the GPU machine: every limit x3
SCALE=$(( DRY ? 3 : 1 ))
BUDGET=${SGFD_FAST_CHECK_BUDGET:-$(( 540 * SCALE ))}
STATUS=()
FAILED=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export PY DRY TMP OUT  # read by the step functions, which run in `timeout bash -c`
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
  PIP_PROGRESS_BAR=off
rm -f "$OUT"/{preflight.txt,build.log,cuda_tests.log,bench.log,report.md} "$OUT"/bench_*.json*

# run_step NAME LIMIT_S LOGFILE CMD...: CMD under the smaller of LIMIT_S and what is left of the
# budget, its output appended to LOGFILE (and shown).
run_step() {
  local name=$1 limit=$(( $2 * SCALE )) log=$3 t0 left rc note
  shift 3
  t0=$(date +%s)
  left=$(( BUDGET - (t0 - START) ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then
    STATUS+=("$(printf '%-12s skipped: out of time (budget %ss)' "$name" "$BUDGET")")
    FAILED=1
    return 1
  fi
  echo "=== $name (limit ${limit}s, at +$(( t0 - START ))s)" | tee -a "$log"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  note=ok
  if (( rc == 124 || rc == 137 )); then note="TIMED OUT"; elif (( rc != 0 )); then note=FAILED; fi
  (( rc != 0 )) && FAILED=1
  STATUS+=("$(printf '%-12s %-9s rc=%-3s %4ss' "$name" "$note" "$rc" "$(( $(date +%s) - t0 ))")")
  return $rc
}

# 1. preflight: what the build and the tests need, each line "ok" or "MISSING"
preflight() {
  local cuda_home=${CUDA_HOME:-/usr/local/cuda}
  have() { if eval "$2" >/dev/null 2>&1; then echo "ok       $1"; else echo "MISSING  $1"; fi; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 \
    || echo "MISSING  nvidia-smi"
  have "nvcc ($cuda_home/bin/nvcc or PATH)" "[ -x $cuda_home/bin/nvcc ] || command -v nvcc"
  have "CUDA static runtime (libcudart_static.a)" \
    "ls $cuda_home/lib64/libcudart_static.a || ls $cuda_home/targets/*/lib/libcudart_static.a"
  have "cmake and ninja programs (setup.py runs them)" "command -v cmake && command -v ninja"
  have "Python headers (Python.h)" \
    "[ -f \"\$($PY -c 'import sysconfig; print(sysconfig.get_paths()[\"include\"])')/Python.h\" ]"
  "$PY" - <<'PY' 2>&1
import importlib.util
for m in ("setuptools", "pybind11", "torch", "triton", "pytest", "pytest_benchmark", "cmake",
          "ninja", "pytest_timeout"):
    print("ok      " if importlib.util.find_spec(m) else "MISSING ", "python module", m)
import torch, triton
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU usable",
      torch.cuda.is_available(), "triton", triton.__version__)
PY
  return 0
}
export -f preflight
run_step preflight 30 "$OUT/preflight.txt" bash -c preflight

# 2. build: offline, sm_90 only (H100/H200); a failed CUDA build falls back to no CUDA
build() {
  if (( DRY )); then
    echo "dry run: no install; the installed sgfd_fast is used. On a GPU this step runs"
    echo "  SGFD_FAST_CUDA=1 SGFD_FAST_CUDA_ARCHS=90 pip install --no-build-isolation --no-deps ."
    echo "  and, if that fails, SGFD_FAST_CUDA=0 pip install --no-build-isolation --no-deps ."
  elif ! env SGFD_FAST_REQUIRE_EXTENSION=1 SGFD_FAST_CUDA=1 \
      SGFD_FAST_CUDA_ARCHS="${SGFD_FAST_CUDA_ARCHS:-90}" \
      "$PY" -m pip install --no-build-isolation --no-deps .; then
    echo "CUDA build failed: installing without CUDA (the Triton kernels still run)"
    rm -rf build  # a CUDA module an earlier build left there would be installed again
    env SGFD_FAST_CUDA=0 "$PY" -m pip install --no-build-isolation --no-deps . || return 1
    return 3  # marks the step FAILED while the later steps go on
  fi
  "$PY" -P -m sgfd_fast.info
}
export -f build
run_step build 180 "$OUT/build.log" bash -c build

# 3. cuda-marked tests: one pytest per file, in parallel; files of ops with CUDA C++ kernels
# first. Each file's log is appended to cuda_tests.log when it ends.
cuda_tests() {
  local files=() first=() rest=() f op width=$(( $(nproc) - 2 ))
  local opts=(-q -p no:cacheprovider -m cuda -rfE -o faulthandler_timeout=60)
  if (( ! DRY )) && ! "$PY" -P -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "torch sees no GPU: every cuda test would skip"; return 1
  fi
  "$PY" -c "import pytest_timeout" >/dev/null 2>&1 && opts+=(--timeout=90)
  mapfile -t files < <(grep -rl --include='test_*.py' "mark.cuda" tests | sort)
  for f in "${files[@]}"; do
    op=$(basename "$f" .py); op=${op#test_}
    [ "$op" = sampling ] && op=sample_negatives
    if [ -f "csrc/cuda/$op.cu" ]; then first+=("$f"); else rest+=("$f"); fi
  done
  if (( DRY )); then  # the mechanics on one file of each kind, collected only
    opts+=(--collect-only); first=("${first[@]:0:1}"); rest=("${rest[@]:0:1}")
  fi
  (( width < 2 )) && width=2
  echo "files, CUDA C++ ops first: ${first[*]} ${rest[*]}"
  for f in "${first[@]}" "${rest[@]}"; do
    while (( $(jobs -rp | wc -l) >= width )); do wait -n; done
    (  # one pytest per file; its summary is printed (under a lock) the moment it ends
      log="$TMP/$(basename "$f").log"
      # its own limit, signalled to pytest itself: a test hung in a CUDA call that ignores
      # SIGINT is killed 10 s later instead of holding the step's pipe open
      timeout --signal=INT --kill-after=10 "$FILE_LIMIT" "$PY" -P -m pytest "$f" "${opts[@]}" \
        > "$log" 2>&1
      rc=$?
      echo "$rc" > "$log.rc"
      flock "$TMP/print.lock" sh -c "echo '--- $f (exit $rc)'; tail -n 40 '$log'"
    ) &
  done
  wait
  ! grep -qv '^[05]$' "$TMP"/*.rc  # 5: nothing collected (no cuda test selected there)
}
export -f cuda_tests
export FILE_LIMIT=$(( 85 * SCALE ))
run_step cuda-tests 100 "$OUT/cuda_tests.log" bash -c cuda_tests

# 4.-6. benchmarks: reference and sgfd_fast only (torch.compile's warm-up alone would eat the
# budget). SGFD_FAST_BENCH_PARTIAL appends each finished benchmark to a .jsonl, kept when the
# step is cut before pytest writes its .json.
if (( DRY )); then
  SIZE=small
  BENCH_OPTS=(--benchmark-min-rounds=1 --benchmark-max-time=0.000001 --benchmark-warmup=off)
  OPS=(bench/bench_row_dropout.py)
  E2E=(--e2e-models BM3 -k "evaluation and (reference or sgfd_fast)")
else
  SIZE=paper
  BENCH_OPTS=(--benchmark-max-time=0.2 --benchmark-min-rounds=5)
  # the ops with CUDA C++ kernels first: a step cut at its limit loses the last files
  OPS=()
  for f in bench/bench_*.py; do
    op=$(basename "$f" .py); op=${op#bench_}
    case $op in end_to_end|attentive_distance_topk) continue ;; esac
    if [ -f "csrc/cuda/$op.cu" ]; then OPS=("$f" "${OPS[@]}"); else OPS+=("$f"); fi
  done
  E2E=(--e2e-models BM3,GRCN -k "toysgames and (reference or sgfd_fast)")
fi
bench_set() {  # NAME LIMIT_S PYTEST_ARGS...
  local name=$1 limit=$2
  shift 2
  SGFD_FAST_BENCH_PARTIAL="$OUT/bench_$name.jsonl" run_step "bench-$name" "$limit" \
    "$OUT/bench.log" "$PY" -P -m pytest "$@" --bench-size "$SIZE" -q -p no:cacheprovider \
    "${BENCH_OPTS[@]}" --benchmark-columns=min,median,max,rounds --benchmark-sort=name \
    --benchmark-json "$OUT/bench_$name.json"
  [ -s "$OUT/bench_$name.json" ] && rm -f "$OUT/bench_$name.jsonl"
}
bench_set ops 80 "${OPS[@]}" -k "(reference or sgfd_fast) and not bf16"
bench_set e2e 90 bench/bench_end_to_end.py "${E2E[@]}"
(( DRY )) && export SGFD_FAST_BENCH_EVAL_USERS=16  # the CPU's float64 check of 256 users is slow
bench_set attentive 60 bench/bench_attentive_distance_topk.py -k "(reference or sgfd_fast) and not bf16"

# 7. the report: steps and speedups into report.md, printed last
report() {
  local jsons=()
  shopt -s nullglob
  jsons=("$OUT"/bench_*.json "$OUT"/bench_*.jsonl)
  echo "# device check $( (( DRY )) && echo '(dry run, CPU)') $(date -u +%FT%TZ)"
  echo
  echo '```'
  printf '%s\n' "${STATUS[@]}"
  echo '```'
  echo
  if (( ${#jsons[@]} )); then
    "$PY" bench/report.py "${jsons[@]}" --markdown
  else
    echo "no benchmark JSON was written"
  fi
}
report > "$OUT/report.md" 2>&1 || FAILED=1

if (( DRY )); then  # the rehearsal's own check: every file where it should be, <= 8, flat
  missing=0
  for f in preflight.txt build.log cuda_tests.log bench.log report.md; do
    [ -s "$OUT/$f" ] || { echo "dry run: $OUT/$f missing or empty" >&2; missing=1; }
  done
  for b in ops e2e attentive; do
    [ -s "$OUT/bench_$b.json" ] || [ -s "$OUT/bench_$b.jsonl" ] \
      || { echo "dry run: $OUT/bench_$b.json(l) missing" >&2; missing=1; }
  done
  n=$(find "$OUT" -type f | wc -l)
  (( n <= 8 )) || { echo "dry run: $n files in $OUT, at most 8 come back" >&2; missing=1; }
  [ -z "$(find "$OUT" -mindepth 1 -type d)" ] \
    || { echo "dry run: a folder in $OUT" >&2; missing=1; }
  (( missing )) && FAILED=1
fi
echo
echo "=== report ($OUT/report.md; total $(( $(date +%s) - START ))s)"
cat "$OUT/report.md"
echo
printf '%s\n' "${STATUS[@]}"  # the steps again: the end of the output is what comes back
exit $FAILED

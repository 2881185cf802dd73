#!/usr/bin/env bash
# GPU check of vikhr, meant to run once on a CUDA machine in a few minutes (<= 9 by default): builds
# the csrc/ extension with CUDA while the evaluation benchmark (which does not need it) makes its
# model and warms up on the GPU (it times nothing before the build has ended), then runs the GPU op
# tests, the kernel schedule sweep, the GPU training tests, the kernel benchmark, the training
# benchmark, the kernel profile and the MLP activation benchmark, in that order. Each step has a
# time limit and writes its results under OUT_DIR as soon as it ends, so a run cut short still
# reports what it did:
#   summary.json      every step so far: name, status (passed / failed / timeout / not run /
#                     skipped / "passed, baseline failed"), exit code, seconds, limit and log;
#                     "finished" is false until the last step is done
#   summary.txt       the same, one line per step, and under a step not failed but not all done
#                     the log's line that says why (a baseline that failed, a profiler not allowed)
#   wheels.log        the install of the wheels in .whl/ (a step only where there are some)
#   env.log           nvidia-smi and `vikhr doctor` (versions, CUDA, every vikhr module imports)
#   build.log         the JIT build (nvcc + g++) and `vikhr.ops.build.compiled_ops()`
#   op-tests.log      pytest -m gpu over the op tests (real sizes, against float64 / the CPU kernel)
#   kernel-sweep.log  the fused forward kernel alone at N=8192, V=40000, bf16 under every CUDA schedule
#                     and the persistent grid at 1-4 blocks per SM, 1 and 2 packs per step
#                     (+ kernel-sweep.json)
#   kernel-bench.log  tools/bench_kernels.py: N=8192, V in {40000, 131072}, bf16 (+ kernel-bench.json)
#   kernel-ncu.log    the fused forward at N=8192, V=40000 once per schedule and packs per step under
#                     Nsight Compute (ncu on the PATH, in CUDA_HOME/bin or /opt/nvidia/nsight-compute;
#                     skipped when there is none or it may not read the performance counters,
#                     ERR_NVGPUCTRPERM): DRAM bytes read and written, L2 hit rate, kernel time
#   train-tests.log   pytest -m gpu over the model, trainer and eval tests (bf16 training, SDPA spec,
#                     `vikhr eval --batch-size auto`)
#   train-bench.log   tools/bench_train.py: 4 Mistral-7B layers, 40k vocab, 2 × 4096 tokens, bf16, vs HF
#   swiglu-bench.log  tools/bench_swiglu.py: the MLP activation against eager and megatron's, bf16
#   eval-bench.log    tools/bench_eval.py: `vikhr eval` per task on a random Mistral-7B (bf16), batch 1
#                     vs auto, and the suite's time estimated from it (+ eval-bench.json, which says
#                     when its timing began: after the build); tasks on the bundled eval
#                     fixtures, plus each default task whose data is in DEVICE_CHECK_EVAL_DATA (a
#                     copy of the evaluation data directory, or part of one)
#
# Usage: tools/device_check.sh [--dry-run] OUT_DIR   (from anywhere; needs a CUDA device and nvcc)
#   --dry-run (or DEVICE_CHECK_DRY_RUN=1): the same steps on the CPU at tiny sizes, the GPU tests
#   collected but skipped, every time limit 3 times the GPU run's (a loaded CI machine);
#   tests/test_device_check.py runs it, so a broken step shows up here first.
# Environment: DEVICE_CHECK_BUDGET_S (total seconds, default 540; dry run 1620),
# DEVICE_CHECK_COMPILE=1 (also time torch.compile in the kernel benchmark), VIKHR_CACHE_DIR (the
# build cache; never in OUT_DIR).
# Packages the machine lacks come as wheels in .whl/ (tools/device_wheels.sh, run beforehand where
# PyPI is reachable; DEVICE_CHECK_WHEELS names another directory); they are installed into a
# directory of this run's own (under TMPDIR, removed at its end) on PYTHONPATH; if they do not
# install, no other step runs.
set -uo pipefail
export PYTHONUNBUFFERED=1

DRY=${DEVICE_CHECK_DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then
  DRY=1
  shift
fi
if [[ $# -ne 1 || $1 == -* ]]; then
  echo "usage: $0 [--dry-run] OUT_DIR" >&2
  [[ ${1:-} == -h || ${1:-} == --help ]] && exit 0
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# Every time limit below is the GPU run's, kept tight for its budget. The dry run's are
# SLACK times as long: on a loaded 2-core CI machine (parallel pytest workers, torchrun tests) its
# tiny steps run several times slower than on an idle one, and a limit they trip is no finding.
if [[ $DRY == 1 ]]; then SLACK=3; else SLACK=1; fi
BUDGET=${DEVICE_CHECK_BUDGET_S:-$((540 * SLACK))}
PY=${PYTHON:-python3}
if [[ -x "$REPO/.venv/bin/python" && -z "${PYTHON:-}" ]]; then PY="$REPO/.venv/bin/python"; fi
START=$SECONDS  # the budget counts the wheels' install too
# This run's own scratch directory, removed when it ends: the wheels' install (a fixed one was shared
# with another run on the machine, and kept an earlier run's packages of other versions), the
# evaluation data's links and the build's end marker.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vikhr-device-check.XXXXXX") || {
  echo "device_check: cannot create a directory in ${TMPDIR:-/tmp}: set TMPDIR to a writable one" >&2
  exit 2
}
trap 'rm -rf "$WORK"' EXIT
SITE=$WORK/site
WHEELS=${DEVICE_CHECK_WHEELS:-$REPO/.whl}
if [[ $DRY == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""  # the dry run must not use a GPU even where one exists
  DEVICE=cpu
else
  DEVICE=cuda
fi

STEPS=()   # JSON objects of the steps so far
FAILED=0
: > "$OUT/summary.txt"

write_summary() {  # write_summary FINISHED
  local joined
  joined=$(IFS=,; echo "${STEPS[*]}")
  printf '{"dry_run": %s, "device": "%s", "budget_s": %d, "finished": %s, "failed_steps": %d, "steps": [%s]}\n' \
    "$([[ $DRY == 1 ]] && echo true || echo false)" "$DEVICE" "$BUDGET" "$1" "$FAILED" "$joined" \
    > "$OUT/summary.json.tmp" && mv "$OUT/summary.json.tmp" "$OUT/summary.json"
}

record() {  # record NAME STATUS EXIT SECONDS LIMIT
  STEPS+=("$(printf '{"step": "%s", "status": "%s", "exit": %d, "seconds": %d, "limit_s": %d, "log": "%s.log"}' \
    "$1" "$2" "$3" "$4" "$5" "$1")")
  [[ $2 == passed* || $2 == skipped ]] || FAILED=$((FAILED + 1))
  echo "$1: $2 (exit $3, ${4}s of ${5}s, log $1.log)" | tee -a "$OUT/summary.txt"
  write_summary false
}

# Steps whose command exits 3 for an outcome that is not a failure of vikhr: the status recorded
# then, and the pattern of the log's lines that say why (copied under the step's summary line).
# tools/bench_kernels.py exits 3 when vikhr's rows passed and a third-party baseline could not run;
# the kernel-ncu step when ncu may not read the GPU's performance counters (NCU_STEP below).
declare -A EXIT3_STATUS=([kernel-bench]="passed, baseline failed" [kernel-ncu]=skipped)
declare -A EXIT3_REASON=([kernel-bench]="^baseline failed: " [kernel-ncu]="^==ERROR== ERR_NVGPUCTRPERM")

declare -A STEP_PID STEP_T0 STEP_LIMIT  # the steps in progress: `timeout`'s pid (it leads the
# step's process group), start time and limit

step_start() {  # step_start NAME LIMIT_SECONDS COMMAND...: starts it in the background under `timeout`
  # within what is left of the budget (1 when too little is left: step_wait records it as not run);
  # LIMIT_SECONDS is the GPU run's (the dry run's is SLACK times as long)
  local name=$1 cap=$(($2 * SLACK))
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 5)); then
    echo "not run: the budget of ${BUDGET}s is spent" > "$OUT/$name.log"
    return 1
  fi
  echo "== $name (limit ${limit}s)" | tee -a "$OUT/summary.txt"
  printf '$ %s\n' "$*" > "$OUT/$name.log"
  STEP_T0[$name]=$SECONDS
  STEP_LIMIT[$name]=$limit
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.log" 2>&1 &
  STEP_PID[$name]=$!
}

step_wait() {  # step_wait NAME: waits for a started step, records it and returns its exit code
  local name=$1
  if [[ -z ${STEP_PID[$name]:-} ]]; then  # not started: no budget left
    record "$name" "not run" -1 0 0
    return 1
  fi
  wait "${STEP_PID[$name]}"
  local code=$?
  unset "STEP_PID[$name]"
  local status=passed
  if ((code == 124 || code == 137)); then
    status=timeout
  elif ((code == 3)) && [[ -n ${EXIT3_STATUS[$name]:-} ]]; then
    status=${EXIT3_STATUS[$name]}
  elif ((code != 0)); then
    status=failed
  fi
  record "$name" "$status" "$code" $((SECONDS - ${STEP_T0[$name]})) "${STEP_LIMIT[$name]}"
  if [[ $status == "${EXIT3_STATUS[$name]:-}" ]]; then
    grep -e "${EXIT3_REASON[$name]}" "$OUT/$name.log" | uniq | head -n 3 | sed 's/^/  /' | tee -a "$OUT/summary.txt"
  fi
  tail -n 5 "$OUT/$name.log"
  return $code
}

step() {  # step NAME LIMIT_SECONDS COMMAND...: runs it to the end (or its limit)
  step_start "$@"
  step_wait "$1"
}

# Interrupted (Ctrl-C, or a `timeout` around this script): `timeout` puts each step in a process
# group of its own, which the signal does not reach; stop them, and report what ran.
on_signal() {
  local name
  for name in "${!STEP_PID[@]}"; do
    kill -TERM -- "-${STEP_PID[$name]}" 2> /dev/null
    echo "interrupted" >> "$OUT/$name.log"
    record "$name" "interrupted" 130 $((SECONDS - ${STEP_T0[$name]})) "${STEP_LIMIT[$name]}"
  done
  write_summary false
  exit 130
}
trap on_signal INT TERM

skip_step() {  # skip_step NAME REASON
  echo "not run: $2" > "$OUT/$1.log"
  record "$1" "not run" -1 0 0
}

write_summary false
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  # Compiled once here, in parallel, as a pip install would: no process after compiles them again
  # (or prints their compile-time warnings) where writing bytecode is turned off. A file that does
  # not compile (a test fixture in some package) is not the install's failure.
  step wheels 120 bash -c '"$0" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$1" "${@:2}" || exit; "$0" -m compileall -q -j 0 "$1" || true' "$PY" "$SITE" "$WHEELS"/*.whl
  if (($? != 0)); then  # every step would fail on an import: none is run
    for name in env build eval-bench op-tests kernel-sweep kernel-bench train-tests train-bench kernel-ncu \
      swiglu-bench; do skip_step "$name" "the wheels did not install (wheels.log)"; done
    write_summary true
    echo "device_check: the wheels in $WHEELS did not install (wheels.log)" | tee -a "$OUT/summary.txt"
    exit 1
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# The build cache stays out of OUT_DIR (which travels back): the default ~/.cache/vikhr.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTEST=("$PY" -m pytest -q -rs -p no:cacheprovider -m gpu)
if "$PY" -c "import pytest_timeout" 2> /dev/null; then PYTEST+=(--timeout $((120 * SLACK))); fi
# `vikhr doctor` imports every vikhr module: a package the machine lacks is named here, first.
# lm-eval's task machinery is imported only when a task is built: imported here too.
step env 90 bash -c "(nvidia-smi || echo 'nvidia-smi: none'); \"$PY\" -m vikhr doctor --no-build \
  && \"$PY\" -c 'import lm_eval.api.task, lm_eval.evaluator; print(\"lm-eval task machinery: imports\")'"

# The evaluation benchmark's data: the bundled fixtures (each in its release's layout), and the
# default tasks' own files when a copy of the evaluation data directory came along.
EVAL_DATA=$WORK/eval-data
mkdir "$EVAL_DATA"
EVAL_TASKS=mmlu_ru,rsg_terra,rsg_muserc,mera_chegeka,bpc
ln -s "$REPO"/tests/data/eval_fixtures/*/ "$EVAL_DATA"/
if [[ -n ${DEVICE_CHECK_EVAL_DATA:-} ]]; then
  ln -s "$(cd "$DEVICE_CHECK_EVAL_DATA" && pwd)"/*/ "$EVAL_DATA"/
  for pair in mmlu-en:mmlu_en terra:terra rucola:rucola chgk:chegeka xquad-ru:xquad_ru; do
    [[ -d $EVAL_DATA/${pair%%:*} ]] && EVAL_TASKS=$EVAL_TASKS,${pair##*:}  # the tasks whose data came
  done
fi
if [[ $DRY == 1 ]]; then
  BENCH_KERNELS=(--device cpu --n 64 --vocab 4096 --runs 1 --threads 1)
  BENCH_PROFILE=(--device cpu --n 64 --vocab 4096 --threads 1)
  BENCH_SWEEP=(--device cpu --n 64 --vocab 4096 --threads 1 --runs 1)
  BENCH_TRAIN=(--cpu-small --layers 1 --batch 1 --seq 64 --warmup 1 --repeats 1)
  BENCH_EVAL=(--random tiny --device cpu --dtype float32 --batch-sizes 1 2 --limit 2 --repeats 1)
  BENCH_SWIGLU=(--shapes 64x48 --runs 1)
else
  BENCH_KERNELS=(--device cuda --n 8192 --vocab 40000 131072 --runs 5)
  BENCH_PROFILE=(--device cuda --n 8192 --vocab 40000)
  BENCH_SWEEP=(--device cuda --n 8192 --vocab 40000 --runs 10)
  BENCH_TRAIN=(--warmup 1 --repeats 3)
  BENCH_EVAL=(--random mistral-7b --device cuda --dtype bfloat16 --batch-sizes 1 auto --limit 8 --repeats 1)
  BENCH_SWIGLU=(--device cuda --dtype bfloat16 --runs 10)
fi
BENCH_KERNELS+=(--timeout $((120 * SLACK)))  # per worker (one implementation at one size)
[[ ${DEVICE_CHECK_COMPILE:-0} == 1 ]] || BENCH_KERNELS+=(--no-compile)
# The profiler around the schedules' launches (the second round of six; the first warms up).
PROFILER=()
NCU=$(command -v ncu || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | tail -n 1 || true)
if [[ $DRY == 0 && -n $NCU ]]; then
  PROFILER=("$NCU" --clock-control none --kernel-name regex:forward_kernel --launch-skip 6 --launch-count 6
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum)
fi

# `vikhr eval` runs transformers' model, not the csrc/ ops: it makes its model and runs its warm-up
# while the build keeps the CPUs busy, and times nothing before the build has ended (BUILD_ENDED);
# it is waited for before anything else is timed on the GPU. Its limit: the build's, and its own.
BUILD_ENDED=$WORK/build-ended
step_start eval-bench $((240 + 100)) "$PY" tools/bench_eval.py "${BENCH_EVAL[@]}" --tasks "$EVAL_TASKS" \
  --data-dir "$EVAL_DATA" --json "$OUT/eval-bench.json" --timed-after "$BUILD_ENDED"
# What is missing (a GPU, a CUDA toolkit, a TORCH_CUDA_ARCH_LIST, a compiler) and what to do, as the
# log's last line, one line: no traceback to read through on a machine held for minutes.
step_start build 240 env VIKHR_CHECK_DEVICE="$DEVICE" "$PY" -c "
import os, sys, torch
from vikhr.errors import VikhrError
from vikhr.ops.build import compiled_ops, load_ops, require_cuda_toolkit
device = os.environ['VIKHR_CHECK_DEVICE']
try:
    if device == 'cuda' and not torch.cuda.is_available():
        raise VikhrError(
            f'torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device '
            f'(CUDA_VISIBLE_DEVICES={os.environ.get(\"CUDA_VISIBLE_DEVICES\")!r}; nvidia-smi in env.log): '
            'run the GPU check where torch sees a GPU, or --dry-run for its CPU steps'
        )
    if device == 'cuda':
        require_cuda_toolkit('the GPU check', 'give the GPU check a machine with one')
    load_ops(verbose=True)
    ops = compiled_ops()
    print(ops)
    if device not in ops['cross_entropy_kl']:
        raise VikhrError(f'the {device} kernels were not compiled (compiled: {ops}); see the build above')
except VikhrError as e:
    sys.exit(f'vikhr: {e}')
"
step_wait build
BUILT=$?
touch "$BUILD_ENDED"
step_wait eval-bench
if ((BUILT == 0)); then
  step op-tests 120 "${PYTEST[@]}" tests/test_ops_cross_entropy_kl.py tests/test_ops_logsumexp.py
  step kernel-sweep 60 "$PY" tools/bench_kernels.py --sweep-schedules "${BENCH_SWEEP[@]}" --json "$OUT/kernel-sweep.json"
  # The kernel's figures against its peers first: the question the run exists to answer.
  step kernel-bench 210 "$PY" tools/bench_kernels.py "${BENCH_KERNELS[@]}" --json "$OUT/kernel-bench.json"
  step train-tests 240 "${PYTEST[@]}" tests/test_model.py tests/test_train.py tests/test_eval.py
  step train-bench 120 "$PY" tools/bench_train.py "${BENCH_TRAIN[@]}"
  if [[ $DRY == 0 && -z $NCU ]]; then
    echo "skipped: no ncu on the PATH, in ${CUDA_HOME:-/usr/local/cuda}/bin or /opt/nvidia/nsight-compute" > "$OUT/kernel-ncu.log"
    record kernel-ncu skipped -1 0 0  # optional: not a failure
  else
    # ncu may exit 0 when it cannot read the counters: its ==ERROR== lines fail the step, except
    # when each is ERR_NVGPUCTRPERM (no access to the performance counters, as in many containers):
    # nothing could be measured and nothing failed, so exit 3, recorded as skipped with that line.
    NCU_STEP='"$@"; code=$?; errors=$(grep "^==ERROR==" "$0")
      if [[ -n $errors ]] && ! grep -qv ERR_NVGPUCTRPERM <<< "$errors"; then exit 3; fi
      ((code == 0)) && [[ -z $errors ]]'
    step kernel-ncu 90 bash -c "$NCU_STEP" "$OUT/kernel-ncu.log" \
      "${PROFILER[@]}" "$PY" tools/bench_kernels.py --profile-schedules "${BENCH_PROFILE[@]}"
  fi
else
  for name in op-tests kernel-sweep kernel-bench train-tests train-bench kernel-ncu; do skip_step "$name" "the build did not pass"; done
fi
step swiglu-bench 40 "$PY" tools/bench_swiglu.py "${BENCH_SWIGLU[@]}"  # needs no build
write_summary true
echo "device_check: $FAILED step(s) not passed, $((SECONDS - START))s (summary.json)" | tee -a "$OUT/summary.txt"
((FAILED == 0))

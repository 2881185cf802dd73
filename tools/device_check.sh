#!/usr/bin/env bash
# GPU check of vikhr: builds the csrc/ extension with CUDA, runs every GPU test and the kernel and
# training benchmarks, and writes everything under OUT_DIR:
#   build.log       the JIT build (nvcc + g++), with `vikhr.ops.build.compiled_ops()` at the end
#   pytest-gpu.log  pytest -m gpu over tests/ (ops vs float64 on CUDA, bf16 training, SDPA spec)
#   bench.log       tools/bench_kernels.py --device cuda (N=8192, V in {32000, 40000, 131072}, bf16)
#   bench.json      the kernel benchmark rows (with the card's name)
#   bench-train.log tools/bench_train.py (4 Mistral-7B layers, 40k vocab, 2 × 4096 tokens, bf16) vs HF
#   summary.txt     one line per step with its exit status
# Usage: tools/device_check.sh OUT_DIR   (from anywhere; needs a CUDA device and nvcc)
# Packages the machine lacks come as wheels in .whl/ (tools/device_wheels.sh, run beforehand where
# PyPI is reachable); they are installed into a private directory on PYTHONPATH.
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
if [[ -x "$REPO/.venv/bin/python" && -z "${PYTHON:-}" ]]; then PY="$REPO/.venv/bin/python"; fi
if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/vikhr-site "$REPO"/.whl/*.whl || exit 1
  export PYTHONPATH="/tmp/vikhr-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# A build cache inside OUT_DIR: a fresh build every run, nothing stale from another machine.
export VIKHR_CACHE_DIR="$OUT/cache"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/summary.txt"

step() {  # step NAME LOGFILE COMMAND...
  local name=$1 log=$2
  shift 2
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  echo "   $name exit $rc (log: $log)" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/$log"
  return $rc
}

{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"; } \
  > "$OUT/env.log" 2>&1

step build build.log "$PY" -c "
import torch
from vikhr.ops.build import compiled_ops, cuda_build_possible, load_ops
assert torch.cuda.is_available(), 'no CUDA device visible to torch'
assert cuda_build_possible(), 'CUDA device present but no CUDA toolkit (nvcc / CUDA_HOME) found'
load_ops(verbose=True)
ops = compiled_ops()
print(ops)
assert 'cuda' in ops['cross_entropy_kl'], 'the CUDA kernel was not compiled'
"
build_rc=$?
rc=$build_rc
if [[ $build_rc -eq 0 ]]; then
  step pytest-gpu pytest-gpu.log "$PY" -m pytest -q -m gpu -rs tests/ || rc=1
  step bench bench.log "$PY" tools/bench_kernels.py --device cuda --json "$OUT/bench.json" || rc=1
  step bench-train bench-train.log "$PY" tools/bench_train.py || rc=1
fi
echo "device_check exit $rc" | tee -a "$OUT/summary.txt"
exit $rc

#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels that the GPU machine's image lacks, into .whl/
# (git-ignored), for tools/device_check.sh to install there. The device image has Python 3.12,
# torch, transformers, tokenizers, sentencepiece, safetensors, pytest...; it lacks megatron-core,
# zstandard and Liger-Kernel (the kernel benchmark's peer). vikhr's own Rust extension
# (vikhr/_core.abi3.so, abi3 for CPython >= 3.11) travels as a built file.
#
# Then, with the device tool:  run(command="bash tools/device_check.sh $OUT",
#                                   carry=[".whl", "vikhr/_core.abi3.so"], timeout_s=540)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
cd "$REPO"
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "megatron-core==0.16.1" "zstandard>=0.22,<0.26" "liger-kernel>=0.5,<1"
test -f vikhr/_core.abi3.so || { echo "vikhr/_core.abi3.so missing: run 'make setup' first" >&2; exit 1; }
ls -1 .whl
du -sh .whl

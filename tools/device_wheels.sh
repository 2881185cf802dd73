#!/usr/bin/env bash
# For a GPU machine without access to PyPI: on a machine with it, fetch into .whl/ (git-ignored)
# the wheels such an image usually lacks, for tools/device_check.sh to install there. The image
# is assumed to have Python 3.12 and the packages in IMAGE_HAS (pytest too); megatron-core,
# zstandard, pydantic (with pydantic-core, annotated-types and typing-inspection: the GPU image seen
# had none), pytest-timeout (device_check.sh bounds each test), Liger-Kernel (the kernel benchmark's
# peer) and lm-evaluation-harness with the packages it needs beyond that image (the eval benchmark;
# three of them are source-only and built into wheels here) come from here. Every dependency of
# vikhr in pyproject.toml is in one list or the other (tests/test_device_check.py checks it;
# `device_wheels.sh --list` prints both).
# vikhr's own Rust extension (vikhr/_core.abi3.so, abi3 for CPython >= 3.11) travels as a built file.
#
# Then copy the checkout with .whl/ and vikhr/_core.abi3.so to the GPU machine and run there:
#   bash tools/device_check.sh OUT_DIR
set -euo pipefail
IMAGE_HAS=(torch transformers tokenizers sentencepiece safetensors numpy pyyaml tqdm tensorboard
  matplotlib psutil ninja pyarrow accelerate peft)
FETCH=("megatron-core>=0.16.1,<0.20" "zstandard>=0.22,<0.26" "liger-kernel>=0.5,<1" "pytest-timeout>=2.3,<3"
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  lm-eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19
  more-itertools==11.2.1 nltk==3.10.4 defusedxml==0.7.1 pytablewriter==1.2.1 typepy==1.3.5
  mbstrdecoder==1.1.5 chardet==6.0.0.post1 tcolorpy==0.1.7 tabledata==1.3.5 dataproperty==1.1.1
  pathvalidate==3.3.1)
BUILD=(rouge-score==0.1.2 sqlitedict==2.1.0 word2number==1.1)  # source-only: built into wheels
if [[ ${1:-} == --list ]]; then
  echo "image: ${IMAGE_HAS[*]}"
  echo "fetched: ${FETCH[*]} ${BUILD[*]}"
  exit 0
fi
if [[ $# -ne 0 ]]; then
  echo "usage: $0 [--list]   (no argument: fetch the wheels into .whl/, replacing it)" >&2
  [[ $1 == -h || $1 == --help ]] && exit 0
  exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
cd "$REPO"
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${FETCH[@]}"
"$PY" -m pip wheel --quiet --no-deps -w .whl "${BUILD[@]}"
test -f vikhr/_core.abi3.so || { echo "vikhr/_core.abi3.so missing: run 'make setup' first" >&2; exit 1; }
ls -1 .whl
du -sh .whl

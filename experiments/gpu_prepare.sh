#!/usr/bin/env bash
# What a GPU machine without network needs for experiments/gpu_check.sh, prepared here:
# ../shared/gpu/prepare.sh (transformers, pydantic, ... wheels into .whl/, the pycode pair into
# .gpu/), plus pytest for the CUDA tests. Then: run with carry [".whl", ".gpu"] and the command
#   source .gpu/on-device.sh && bash experiments/gpu_check.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
bash "${BILD_SHARED:-../shared}/gpu/prepare.sh"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform any -d .whl pytest pluggy iniconfig packaging
du -sh .whl .gpu

#!/usr/bin/env bash
# What a GPU machine without network needs for experiments/gpu_check.sh, prepared here:
# ../shared/gpu/prepare.sh empties .whl/, downloads the wheels the machine lacks or has too old
# (transformers 5.24, pydantic, ...) and packs the pycode pair into .gpu/. Nothing the machine
# already has is carried (its own pytest, pluggy, iniconfig and packaging are used). Then run with
# carry [".whl", ".gpu"] and the command
#   source .gpu/on-device.sh && bash experiments/gpu_check.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
bash "${BILD_SHARED:-../shared}/gpu/prepare.sh"
du -sh .whl .gpu

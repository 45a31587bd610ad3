#!/usr/bin/env bash
# The main job on the built-in synthetic dataset (set-up included). Extra arguments go to the pipeline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/python -m data.prepare synthetic "$@"

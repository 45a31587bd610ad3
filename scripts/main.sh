#!/usr/bin/env bash
# The main job (set-up included): generate the synthetic dataset, extract every modality, train
# the models, index, evaluate and write the report under $TVR_HOME/runs/pipeline-synthetic/.
# Extra arguments go to `python -m flows.pipeline` (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PREFECT_SERVER_ANALYTICS_ENABLED=false
export TVR_HOME=${TVR_HOME:-$PWD/tvr_home}
export PREFECT_HOME=${PREFECT_HOME:-$TVR_HOME/prefect}
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}
mkdir -p "$PREFECT_HOME"
exec .venv/bin/python -m flows.pipeline "$@"

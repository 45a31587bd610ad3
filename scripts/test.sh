#!/usr/bin/env bash
# The test suite (set-up included). Extra arguments go to pytest, e.g. -m 'not slow'.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# a temporary Prefect server starts per flow run without a configured API; give it time on a busy machine
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# GPU smoke and benchmark: one command, under 8 minutes, safe on a fresh GPU machine with the repo.
#   bash bench/gpu_check.sh            # runs the checks (a dry listing when there is no CUDA device)
#   bash bench/gpu_check.sh --dry      # only says what it would check
# It writes nothing outside a temporary folder, changes no GPU setting, and stops after 450 s.
# Record its output in docs/extraction.md ("GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
echo "[gpu_check] $(date -u +%FT%TZ) $(hostname) python: $PY"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
  echo "[gpu_check] nvidia-smi not found"
fi
export HF_HUB_OFFLINE=1
exec timeout 450 "$PY" -m bench.gpu_check "$@"

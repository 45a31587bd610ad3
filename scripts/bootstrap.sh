#!/usr/bin/env bash
# Create .venv and install the locked dependency set when missing or when the lock changed, then
# install this project into it (editable, no dependencies: the console scripts tvr-extract,
# tvr-train, ...) when missing or when pyproject.toml changed.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${TVR_PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required (found $("$PY" --version 2>&1)); set TVR_PYTHON" >&2
  exit 1
fi
stamp=.venv/.lock-sha256
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] creating .venv and installing requirements.lock (torch is large: a few minutes the first time)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.lock
  echo "$want" > "$stamp"
fi
project_stamp=.venv/.project-sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/tvr-extract ] || [ "$(cat "$project_stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the project (editable) and its tvr-* commands into .venv" >&2
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$project_stamp"
fi

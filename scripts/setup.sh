#!/usr/bin/env bash
# Installs everything Runyard needs into ./.venv (and the buf CLI into ./node_modules).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned (pyproject's "train" extra): a looser pin would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet -e ".[dev,train]"
if [ "${1:-}" = "--with-buf" ] && command -v npm >/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

#!/usr/bin/env bash
# Static checks: generated stubs fresh, protos lint clean, ruff and mypy clean.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python protos/generate.py --check
if [ -x node_modules/.bin/buf ]; then
  node_modules/.bin/buf lint
  if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
    node_modules/.bin/buf breaking --against '.git#ref=HEAD~1'
  fi
  echo "buf lint: clean"
else
  echo "buf not installed (npm missing?): skipping buf lint" >&2
fi
.venv/bin/ruff check .
scripts/typecheck.sh

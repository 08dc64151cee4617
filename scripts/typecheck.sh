#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping (runyard.server -> server/, ...),
# so this lays the `runyard` package out as installed, with links, and checks that.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck
rm -rf "$tree"
mkdir -p "$tree/runyard"
for entry in clients/runyard/*; do
  ln -s "$PWD/$entry" "$tree/runyard/$(basename "$entry")"
done
ln -s "$PWD/server" "$tree/runyard/server"
ln -s "$PWD/agent" "$tree/runyard/agent"
ln -s "$PWD/migrations" "$tree/runyard/migrations"
MYPYPATH="$PWD/$tree" .venv/bin/mypy "$tree/runyard" tests bench protos/generate.py "$@"

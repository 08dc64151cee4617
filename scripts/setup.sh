#!/usr/bin/env bash
# Installs everything Runyard needs into ./.venv (and the buf CLI into ./node_modules).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The container runtime and `runyard images build`: Podman (with runc), bubblewrap for the
# process runtime's sandbox, mmdebstrap for the images, uidmap for rootless Podman. Debian's
# packages; installed here only as root (elsewhere: say what is missing and carry on).
missing=()
for pair in podman:podman runc:runc bwrap:bubblewrap mmdebstrap:mmdebstrap newuidmap:uidmap; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    echo "setup: not installed: ${missing[*]} (apt-get install ${missing[*]}); the container tests need them" >&2
  fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned (pyproject's "train" extra): a looser pin would pull a multi-GB CUDA build.
# Every extra: the server and the agent for `runyard up` and the tests, plot and completion for the CLI tests.
.venv/bin/python -m pip install --quiet -e ".[server,agent,plot,completion,train,dev]"
if [ "${1:-}" = "--with-buf" ] && command -v npm >/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
# Podman's settings for these hosts (agent/engine.py CONTAINERS_CONF), unless the host has its own.
if [ "$(id -u)" = 0 ] && [ ! -e /etc/containers/containers.conf ] && command -v podman >/dev/null; then
  mkdir -p /etc/containers
  .venv/bin/python -c 'from runyard.agent.engine import CONTAINERS_CONF; print(CONTAINERS_CONF, end="")' \
    >/etc/containers/containers.conf
fi

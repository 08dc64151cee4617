#!/usr/bin/env bash
# Builds the framework images the container tests run (python 3.11, pytorch 2.13) into this
# host's Podman storage, through a `podman system service` of its own. Each build is skipped
# when its build key (Debian suite, packages, wheel hashes, the runyard helper) is unchanged,
# so a second run on the same machine takes seconds. Extra arguments: FRAMEWORK VERSION pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then set -- python 3.11 pytorch 2.13; fi
exec .venv/bin/python - "$@" <<'PY'
import sys
import time

from runyard.agent.engine import start_podman_service
from runyard.client.cli import main

service = start_podman_service()
try:
    pairs = sys.argv[1:]
    for framework, version in zip(pairs[::2], pairs[1::2], strict=True):
        started = time.monotonic()
        if main(["images", "build", framework, version, "--engine-url", service.url]) != 0:
            sys.exit(1)
        print(f"images: {framework} {version} ready in {time.monotonic() - started:.1f}s", flush=True)
finally:
    service.stop()
PY

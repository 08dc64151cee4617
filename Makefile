# The two commands of the README: `make demo` (the main job) and `make test`.
.PHONY: setup demo test check protos docs bench images

setup:
	scripts/setup.sh --with-buf

demo: setup
	scripts/demo.sh

test: setup
	scripts/services.sh
	scripts/check.sh
	scripts/images.sh
	.venv/bin/pytest -q -p no:cacheprovider

check:
	scripts/check.sh

protos:
	.venv/bin/python protos/generate.py

# The framework images the container tests run (python 3.11, pytorch 2.13); skipped when up to date.
images:
	scripts/images.sh

# docs/cli.md and docs/manifest.md from the argparse parser and the manifest validator.
docs:
	.venv/bin/python scripts/gen_docs.py

bench:
	.venv/bin/python bench/event_log.py
	.venv/bin/python bench/replay.py
	.venv/bin/python bench/submit_latency.py
	.venv/bin/python bench/scheduling.py
	.venv/bin/python bench/overhead.py
	.venv/bin/python bench/metrics_ingest.py
	.venv/bin/python bench/asha_efficiency.py
	.venv/bin/python bench/tensorboard_crc.py

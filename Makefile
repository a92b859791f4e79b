# The two entry points of the README. Both run the idempotent set-up first.
PY := .venv/bin/python
SAMPLE := trace_replay/data/lbnl_sample.pcap.gz

.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	mkdir -p out
	.venv/bin/dm-demo --duration 60 --json out/demo-summary.json

test: setup
	$(PY) -m pytest

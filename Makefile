# The two entry points of the README. Both run the idempotent set-up first.
PY := .venv/bin/python
SAMPLE := trace_replay/data/lbnl_sample.pcap.gz

.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/dm-trace info $(SAMPLE)
	.venv/bin/dm-trace scenarios $(SAMPLE)

test: setup
	$(PY) -m pytest

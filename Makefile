# Two entry points: `make run` (the pipeline) and `make test` (the tests). Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test repro-check unlock clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Run the whole DAG on the embedded synthetic data (initialises DVC if this is a bare clone).
run: install
	test -d .dvc || dvc init --quiet
	dvc repro

# Fast tests plus the end-to-end pipeline test (marked slow, still a few minutes on 2 cores).
test: install
	$(BIN)/python -m pytest -q

# The shrunk pipeline twice, in two fresh temp copies: fails naming the stage, file and first differing
# value when an output hash or a metric differs (timings and ONNX export dates are left out, and listed).
repro-check: install
	PYTHONPATH=src $(BIN)/python -m stagetrain.repro

# After a hard kill of `dvc repro` (reboot, kill -9): drop DVC's stale lock, then `dvc repro` resumes.
unlock: install
	PYTHONPATH=src $(BIN)/python -m stagetrain.unlock

clean:
	rm -rf .stagetrain .ultralytics data/raw data/organized models metrics

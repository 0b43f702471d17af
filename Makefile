# Entry points: `make run` (the pipeline), `make test` (every test), `make test-fast` (the edit loop: no slow
# tests), `make lint` (ruff). All create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-fast lint repro-check unlock clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Run the whole DAG on the embedded synthetic data (initialises DVC if this is a bare clone).
run: install
	test -d .dvc || dvc init --quiet
	dvc repro

# The full suite: fast tests plus the end-to-end ones marked slow (pipeline, queue, remote, resume after a kill).
test: install
	$(BIN)/python -m pytest -q

# The edit loop: every test not marked slow (~2 minutes on 2 cores). A test that trains a model (in process
# or through a stage CLI) carries @pytest.mark.slow.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# What CI enforces before the tests: ruff's formatting and its lint rules (fix with `ruff format` / `ruff check --fix`).
lint: install
	status=0; $(BIN)/ruff format --check || status=1; $(BIN)/ruff check || status=1; exit $$status

# The shrunk pipeline twice, in two fresh temp copies: fails naming the stage, file and first differing
# value when an output hash or a metric differs (timings and ONNX export dates are left out, and listed).
# Only synthetic data shrinks: a `local` dataset is read at full size, a `roboflow` one needs ROBOFLOW_API_KEY.
repro-check: install
	PYTHONPATH=src $(BIN)/python -m stagetrain.tools.repro_check

# After a hard kill of `dvc repro` (reboot, kill -9): drop DVC's stale lock, then `dvc repro` resumes.
unlock: install
	PYTHONPATH=src $(BIN)/python -m stagetrain.tools.unlock

clean:
	rm -rf .stagetrain .ultralytics data/raw data/organized data/trainsets models metrics

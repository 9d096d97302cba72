# Two commands on a fresh machine with only Python: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers, each a whole test file: most tests keep one core busy, so two
# workers take the suite on 2 cores from 12 to 5.5 min; each holds ~1.5 GB (0: one process).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# Local, quiet, no telemetry; `reconad` on PATH for the commands in dvc.yaml.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install run test test-faults test-all bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

## run: install, reproduce the pipeline on the embedded dataset, print the metrics
run: install
	$(BIN)/dvc repro
	$(BIN)/reconad metrics

## test: the test suite without the slowest end-to-end tests
test: install
	$(PYTEST) -m "not slow" -q

## test-faults: the slow fault tests (real signals, a full disk, determinism); CI runs them
test-faults: install
	$(PYTEST) -m slow -q tests/test_faults_*.py

## test-all: every test, including real training subprocesses
test-all: install
	$(PYTEST) -q

## bench: speed figures and ratios, written to reports/bench.json
bench: install
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

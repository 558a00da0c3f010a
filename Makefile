# LossLab — `make run` serves the app, `make test` runs the whole suite.
# Both create .venv when missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench bench-api bench-limits conformance clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq "$(TORCH_SPEC)" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/losslab serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest

conformance: $(STAMP)
	for f in ../shared/vectors/*.json; do $(BIN)/python -m losscore.conformance $$f || exit 1; done

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-api: $(STAMP)
	$(BIN)/python -m benchmarks.api_load

bench-limits: $(STAMP)
	$(BIN)/python -m benchmarks.serve_limits

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

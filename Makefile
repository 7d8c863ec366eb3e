# streamrec: `make demo` runs the pipeline end to end on the local mini-cluster,
# `make test` runs lint, types and the test suite. Both set up .venv first (idempotent).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.streamrec-setup
TORCHREC := torchrec==1.8.0
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup test lint demo bench up down status clean

setup: $(STAMP)

# Order matters: torch (local CPU wheel) and the project's deps first, then torchrec
# with --no-deps, because its metadata pulls the GPU fbgemm-gpu build.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps $(TORCHREC)
	$(BIN)/python -c "import torch, torchrec, fbgemm_gpu, pyspark, ray, mlflow, deltalake; print('streamrec environment ok: torch', torch.__version__, 'torchrec', torchrec.__version__)"
	@touch $(STAMP)

# Lint and types first (the `lint` target), then pytest. pytest exits 5 when it collects
# no tests: reported as a failure, never a pass.
test: lint
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# ruff (lint and format check) and mypy, configured in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: setup
	$(BIN)/streamrec demo $(DEMO_ARGS)

bench: setup
	$(BIN)/python -m benchmarks.run_all

up: setup
	$(BIN)/streamrec up

status: setup
	$(BIN)/streamrec status

down: setup
	$(BIN)/streamrec down

clean: down
	rm -rf .streamrec

# streamrec: `make demo` runs the pipeline end to end on the local mini-cluster,
# `make test` runs lint, types and the whole test suite (what CI runs), `make test-fast` lint,
# types and the tests that start no service. All set up .venv first (idempotent).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.streamrec-setup
TORCHREC := torchrec==1.8.0
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup test test-fast lint demo bench up down status clean

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
# no tests: reported as a failure, never a pass. PYTEST_ARGS adds pytest arguments for a
# developer (`make test PYTEST_ARGS="-x tests/serving"`); .ci/run clears it and PYTEST_ADDOPTS,
# so CI's environment cannot narrow the suite.
PYTEST = $(BIN)/python -m pytest
define run_pytest
	@$(PYTEST) $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make $@: pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

# The whole suite. Tiers (markers set by tests/conftest.py): integration tests start a real
# service, e2e tests run several as a loop; the rest are unit tests. One process: the two-lane
# mode (`make test PYTEST_ARGS="-n 2 --dist loadgroup"`, tests/conftest.py) has not yet passed
# on a quiet machine (README, "Tests, in tiers").
test: lint
	$(call run_pytest,)

# The unit tests only: a signal in a few minutes, on one pytest worker per core (pytest-xdist;
# unit tests share no service, port or file).
test-fast: lint
	$(call run_pytest,-m "not integration and not e2e" -n auto)

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

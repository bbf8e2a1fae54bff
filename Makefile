# The two commands a newcomer needs: `make demo` and `make test`.
# Each sets up its own virtualenv and dependencies first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck services install web worker scheduler bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nps-dispatch demo

# The clock guard: the whole suite runs a second time with the wall clock a year ahead, so that
# a test reading today's date instead of an injected `now` fails here rather than next month.
CLOCK_GUARD_TESTS := tests

# Starts (and if needed installs) Redis, PostgreSQL and Chromium for the test suite,
# then runs linters, the type checker and every test. See scripts/test-services.sh.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	. scripts/test-services.sh && $(BIN)/python -m pytest $(PYTEST_ARGS)
	. scripts/test-services.sh && NPS_TEST_CLOCK_SHIFT=365d $(BIN)/python -m pytest -q $(CLOCK_GUARD_TESTS)
	$(MAKE) --no-print-directory chaos

# The chaos run at CI size (see the README): the three promises end to end, with real processes,
# a worker SIGKILLed every few seconds, Redis restarted and a provider answering badly. It exits
# non-zero on any violation, which fails `make test`.
chaos: $(STAMP)
	. scripts/test-services.sh && $(BIN)/python -m bench.chaos --purchases 300

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

# One benchmark of bench/ (see the README's Performance section): make bench BENCH=scheduler
BENCH ?= report_million
bench: $(STAMP)
	. scripts/test-services.sh && $(BIN)/python -m bench.$(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache nps-dispatch.db test-artifacts

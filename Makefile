# The two commands: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exact versions with hashes; regenerate with `make lock`, never by hand. LOCK is what the
# service needs (runtime and the build backend: the Docker image installs it); DEV_LOCK is
# the same pins plus the dev extras (pytest, ruff, mypy, playwright): what a clone and CI
# install.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
UV_VERSION := 0.13.9

.PHONY: install lock test test-fast demo lint format services-up services-down bench clean

install: $(VENV)/.installed

# Installed again whenever the lock or the project's metadata changes. Nothing is resolved
# here: the lock's pins (hash-checked), then the project alone. `pip check` fails when
# pyproject.toml gained a dependency that the lock does not have yet (run `make lock`).
$(VENV)/.installed: $(DEV_LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --group pyproject.toml:build \
	--generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--no-strip-extras --custom-compile-command "make lock" --quiet $(LOCK_ARGS)

## Re-resolve both locks from pyproject.toml: keeps existing pins where they still fit;
## `make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed versions. The dev
## lock is resolved under the runtime lock's pins, so both agree on every shared package.
lock:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

# Parallel test workers for `make test` (pytest-xdist). Most of the suite waits on
# brokers, servers and deliberate outages rather than computing, so 3 workers on 2 cores
# finish sooner than 2; TEST_WORKERS=0 runs in one process (easier to debug).
TEST_WORKERS ?= 3

## Start Kafka and PostgreSQL, run the whole test suite, stop what was started.
test: install
	dev/ensure-chromium
	dev/with-services $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

## The service-free tier (markers set in conftest.py): starts nothing, runs in seconds.
test-fast: install
	$(BIN)/pytest -m "not services and not browser" $(PYTEST_ARGS)

## Services, topics, a demo producer and the Dagster UI on http://127.0.0.1:3000 (Ctrl-C stops).
demo: install
	dev/demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy backup_pipeline backup_pipeline_tests bench soak dev
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	dev/with-services $(BIN)/python bench/backup_throughput.py $(BENCH_ARGS)

services-up:
	dev/services up

services-down:
	dev/services down

clean:
	-dev/services down
	rm -rf $(VENV) .dev

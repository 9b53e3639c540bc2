# The two commands: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo lint format services-up services-down bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

## Start Kafka and PostgreSQL, run the whole test suite, stop what was started.
test: install
	dev/ensure-chromium
	dev/with-services $(BIN)/pytest $(PYTEST_ARGS)

## Services, topics, a demo producer and the Dagster UI on http://127.0.0.1:3000 (Ctrl-C stops).
demo: install
	dev/demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy backup_pipeline

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

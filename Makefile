# docqueue: `make run` serves the app, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
FLASK := $(BIN)/flask --app docqueue_app

.PHONY: install run migrate test lint format stress bench clean

install: $(INSTALLED)

# Reinstalled whenever pyproject.toml changes.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

migrate: install
	$(FLASK) db upgrade

run: migrate
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

# The queue's state machine checked against its model for a long time (minutes,
# split between SQLite and PostgreSQL); prints the examples and steps checked.
# Then the crash storm of tests/e2e with 2,000 documents on each back end.
STRESS_MINUTES ?= 20
STORM_DOCUMENTS ?= 2000
stress: install
	DOCQUEUE_STRESS_MINUTES=$(STRESS_MINUTES) $(BIN)/python -m pytest tests/queue/test_state_machine.py -s -q -p no:cacheprovider -k test_queue_state_machine
	DOCQUEUE_STORM_DOCUMENTS=$(STORM_DOCUMENTS) $(BIN)/python -m pytest tests/e2e/test_crash_storm.py -s -q -p no:cacheprovider

# Every target of issue 14 in one run, on PostgreSQL (127.0.0.1:5432) and SQLite, in
# about ten minutes: one table of ratios against the raw database loops and the peers,
# written with a chart to bench-results/ (bench.json, bench.png). BENCH_ARGS passes
# options (`make bench BENCH_ARGS="--jobs 2000 --only drain,pickup"`; see --help).
# The peers (pgqueuer, huey, procrastinate) and matplotlib come with the bench extra.
BENCH_INSTALLED := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_INSTALLED): $(INSTALLED) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_INSTALLED)

bench: $(BENCH_INSTALLED)
	$(BIN)/python -m bench.perf $(BENCH_ARGS)
	$(BIN)/python bench/isolation_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

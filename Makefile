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

bench: install
	$(BIN)/python bench/isolation_overhead.py
	$(BIN)/python -m bench.queue_throughput
	$(BIN)/python -m bench.admin_dashboard

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# docqueue: `make run` serves the app, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
FLASK := $(BIN)/flask --app docqueue_app

.PHONY: install ocr-model bytecode run migrate test lint format stress bench clean

install: $(INSTALLED) ocr-model bytecode

# An editable install leaves the package's bytecode to be written on first import,
# which PYTHONDONTWRITEBYTECODE (set on some machines) forbids: every start then
# compiles the package again (about 40 ms of a worker's start). Compiled here instead,
# as pip does for installed packages; only changed files are compiled again.
bytecode: $(INSTALLED)
	$(BIN)/python -m compileall -q docqueue_app

# Reinstalled whenever pyproject.toml changes.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

# OCR (DOCQUEUE_OCR=auto, the default) reads with Tesseract: the library comes in
# tesserocr's wheel, its English model from Debian, installed here when it is missing
# (as root, or through sudo). Nothing is downloaded when the app runs.
# The folders docqueue_app/processing/ocr.py (TESSDATA_DIRS) looks in, in its order.
TESSDATA_DIRS := /usr/share/tesseract-ocr/5/tessdata /usr/share/tesseract-ocr/4.00/tessdata \
	/usr/share/tessdata /usr/local/share/tessdata
OCR_MODEL := $(wildcard $(addsuffix /eng.traineddata,$(TESSDATA_DIRS)))

ocr-model:
ifeq ($(OCR_MODEL),)
	@echo "Installing Debian's Tesseract and its English model for OCR (apt-get install tesseract-ocr tesseract-ocr-eng)"
	.ci/apt-install tesseract-ocr tesseract-ocr-eng
endif

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
# Then the webhook deliveries' state machine (tests/webhooks) for WEBHOOK_STRESS_MINUTES,
# and the crash storm of tests/e2e with 2,000 documents on each back end.
STRESS_MINUTES ?= 20
WEBHOOK_STRESS_MINUTES ?= 5
STORM_DOCUMENTS ?= 2000
stress: install
	DOCQUEUE_STRESS_MINUTES=$(STRESS_MINUTES) $(BIN)/python -m pytest tests/queue/test_state_machine.py -s -q -p no:cacheprovider -k test_queue_state_machine
	DOCQUEUE_STRESS_MINUTES=$(WEBHOOK_STRESS_MINUTES) $(BIN)/python -m pytest tests/webhooks/test_delivery_state_machine.py -s -q -p no:cacheprovider
	DOCQUEUE_STORM_DOCUMENTS=$(STORM_DOCUMENTS) $(BIN)/python -m pytest tests/e2e/test_crash_storm.py -s -q -p no:cacheprovider
	DOCQUEUE_LEAK_DOCUMENTS=2000 $(BIN)/python -m pytest tests/e2e/test_leaks.py -s -q -p no:cacheprovider -k rounds

# Every target of issue 14 in one run, on PostgreSQL (127.0.0.1:5432) and SQLite, in
# about ten minutes: one table of ratios against the raw database loops and the peers,
# written with a chart to bench-results/ (bench.json, bench.png). BENCH_ARGS passes
# options (`make bench BENCH_ARGS="--jobs 2000 --only drain,pickup"`; see --help).
# The peers (pgqueuer, huey, procrastinate) and matplotlib come with the bench extra.
# Then OCR: docqueue's Tesseract against RapidOCR (error rate, pages/s, memory; bench/ocr.py),
# and 10,000 files through `docqueue import` against HTTP uploads (bench-results/import.json).
BENCH_INSTALLED := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_INSTALLED): $(INSTALLED) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_INSTALLED)

bench: $(BENCH_INSTALLED) ocr-model bytecode
	$(BIN)/python -m bench.perf $(BENCH_ARGS)
	$(BIN)/python bench/isolation_overhead.py
	$(BIN)/python -m bench.ocr
	$(BIN)/python -m bench.import_vs_uploads

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

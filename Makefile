# crm-batch: every target creates/updates .venv by itself, so any of them works as the first command
# on a fresh machine with Python 3.11. pip runs again only when requirements*.txt change (stamp file).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(or $(shell command -v python3.11 2>/dev/null),python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.requirements.stamp
REQUIREMENTS := $(wildcard requirements*.txt)

ACCOUNTS ?= 5000
SEED ?= 0
BENCH_ARGS ?=
PYTEST_ARGS ?=

export PYTHONPATH := $(CURDIR)/plugins
export CRM_HOME := $(CURDIR)

.PHONY: help venv run seed test bench bench-overdue bench-accounts lint format clean distclean

help:
	@echo "make run      seed the demo DBs if needed, apply airflow_settings.yaml, start the SMTP sink and airflow standalone on :8080"
	@echo "make seed     (re)write var/crm.db, var/erp.db, var/gp.db   ACCOUNTS=$(ACCOUNTS)"
	@echo "make test     pytest (PYTEST_ARGS=...)"
	@echo "make bench    bench/purchase_profile.py (BENCH_ARGS=...)"
	@echo "make bench-email  bench/email_fanout.py: 10,000 birthday e-mails to a loopback sink, package vs stock SmtpHook (BENCH_ARGS=...)"
	@echo "make bench-overdue  bench/overdue_notices.py: PDFs/s and the whole dunning run to a loopback sink (BENCH_ARGS=...)"
	@echo "make bench-accounts  bench/account_maintenance.py: account status + class transition vs naive per-account loops (BENCH_ARGS=...)"
	@echo "make lint     ruff check + ruff format --check   (make format fixes)"
	@echo "make venv     create/update .venv only"
	@echo "make clean    remove var/ (demo DBs, Airflow home, mail, bench data) and caches; make distclean also removes .venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(REQUIREMENTS) | $(BIN)/python
	$(BIN)/python -m pip install -r requirements-dev.txt
	touch $@

venv: $(STAMP)

run: $(STAMP)
	SEED=$(SEED) ACCOUNTS=$(ACCOUNTS) bin/run-local.sh

seed: $(STAMP)
	$(BIN)/python -m crm.demo seed --accounts $(ACCOUNTS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/purchase_profile.py $(BENCH_ARGS)

bench-email: $(STAMP)
	$(BIN)/python bench/email_fanout.py $(BENCH_ARGS)

bench-overdue: $(STAMP)
	$(BIN)/python bench/overdue_notices.py $(BENCH_ARGS)

bench-accounts: $(STAMP)
	$(BIN)/python bench/account_maintenance.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf var .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# needseg - the two commands a newcomer needs: `make demo` and `make test`.
# Both install everything first (uv if missing, then the locked environment).

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --locked --no-sync

.PHONY: help install browser demo test test-fast airflow lint clean

help:
	@echo "make demo     install, then run the demo: a synthetic company through Airflow, monthly cycles"
	@echo "make test     install, then run the whole test suite"
	@echo "make test-fast  install, then the everyday tier (no whole cycles, Airflow or evaluation; about 3 min)"
	@echo "make airflow  install, then start Airflow locally with needseg's DAGs (Ctrl-C stops it)"
	@echo "make browser  install Debian's chromium for the report's browser test (as root, when missing)"
	@echo "make lint     ruff: lint rules, complexity <= 15, formatting"
	@echo "make clean    remove generated data and the local Airflow home"

# uv itself, into a project-local folder, when the machine has none.
$(CURDIR)/.tools/bin/uv:
	python3 -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --compile-bytecode --extra production
	$(RUN) needseg dbt-manifest
	@touch $@

install: .venv/.installed

demo: install
	$(RUN) needseg demo

# Headless Chromium for tests/test_report_browser.py: Debian's package, installed when it is
# missing and this runs as root with apt-get; otherwise the test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium (headless browser for the report test) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "chromium is missing and cannot be installed here (needs root and apt-get): the report's browser test will skip"; fi

# One pytest worker per core (TEST_WORKERS=0: all in one process); see tests/conftest.py.
TEST_WORKERS ?= auto

test: install browser
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

airflow: install
	$(RUN) needseg airflow

LINTED := pipelines dags tests benchmarks

lint: install
	$(RUN) ruff check $(LINTED)
	$(RUN) ruff format --check $(LINTED)

clean:
	rm -rf data .airflow dbt_project/target dbt_project/logs

# Developer and runbook entry points. `make help` lists the targets.
# Site names and the values of TAG, DB_BACKUP and FILES_BACKUP reach jerpctl through the
# environment, never re-read by the shell nor expanded by make (`$(value ...)`: a value holding
# `$(shell ...)` stays text), and jerpctl validates them before anything is enqueued.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTEST ?= $(VENV)/bin/pytest
PYTEST_ARGS ?=
JERPCTL ?= workers/jerpctl.sh
COMPOSE ?= $(if $(shell docker compose version 2>/dev/null),docker compose,docker-compose)
PLATFORM ?= -p jerp -f compose.yml
JOBS ?= -p jerp-jobs -f compose.jobs.yml

# Command-line and environment variables are exported to recipes, which would expand them.
unexport TAG DB_BACKUP FILES_BACKUP UNVERIFIED FRAPPE_SRC REALBENCH_DIR REALBENCH_ARGS

.PHONY: help run demo demo-down test test-real packages venv services images migrate release rollback logs up down

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

test: packages venv services images ## Start the test services, then run pytest (extra arguments: PYTEST_ARGS=...)
	$(PYTEST) $(PYTEST_ARGS)

test-real: export JERP_MAKE_FRAPPE_SRC = $(value FRAPPE_SRC)
test-real: export JERP_MAKE_REALBENCH_DIR = $(value REALBENCH_DIR)
test-real: export JERP_MAKE_REALBENCH_ARGS = $(value REALBENCH_ARGS)
test-real: venv ## Workflows end to end on a real Frappe bench built from FRAPPE_SRC=<Frappe git folder> (or REALBENCH_DIR=<a bench>); not in CI
	@set -euo pipefail; \
	if [ -n "$$JERP_MAKE_REALBENCH_DIR" ]; then bench_dir=$$JERP_MAKE_REALBENCH_DIR; \
	elif [ -n "$$JERP_MAKE_FRAPPE_SRC" ]; then \
		root=$${RB_ROOT:-$(CURDIR)/tests/.run/realbench-bench}; \
		RB_ROOT=$$root tests/realbench/build.sh "$$JERP_MAKE_FRAPPE_SRC"; bench_dir=$$root/frappe-bench; \
	else echo "FRAPPE_SRC=<Frappe git folder> or REALBENCH_DIR=<bench folder> is required" >&2; exit 2; fi; \
	read -r -a extra <<<"$$JERP_MAKE_REALBENCH_ARGS"; \
	$(VENV)/bin/python -m tests.realbench.run --bench-dir "$$bench_dir" "$${extra[@]}"

run: venv ## A worker and Beat for this machine's settings, each restarted if it exits (jerp-run; Ctrl-C stops both)
	$(VENV)/bin/jerp-run

demo: ## The main job on an embedded default: 8 stand-in sites, a worker and Beat, migrate-all with a recovery, backup-all
	tests/services/packages.sh demo
	$(MAKE) --no-print-directory venv
	$(VENV)/bin/python -m tests.demo up

demo-down: ## Stop what `make demo` started and remove .demo/
	@if [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python -m tests.demo down; else rm -rf .demo; fi

packages: ## Install the Debian packages the tests need, when missing (as root)
	tests/services/packages.sh test

venv: $(VENV)/.installed ## Create the virtualenv (.venv) with the project and its test tools

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

services: ## Start this checkout's private Redis and MariaDB on free ports (tests/services/up.sh)
	tests/services/up.sh

images: ## Build the test images (tests/images/build.sh)
	tests/images/build.sh

site-%: export JERP_MAKE_SITE = $*
site-%: ## Provision a customer site: make site-cliente.exemplo.com
	$(JERPCTL) enqueue provision "$$JERP_MAKE_SITE" --wait

backup-%: export JERP_MAKE_SITE = $*
backup-%: ## Back up a site (and copy it off-site when configured): make backup-cliente.exemplo.com
	$(JERPCTL) enqueue backup "$$JERP_MAKE_SITE" --wait

restore-%: export JERP_MAKE_SITE = $*
restore-%: export JERP_MAKE_DB = $(value DB_BACKUP)
restore-%: export JERP_MAKE_FILES = $(value FILES_BACKUP)
restore-%: export JERP_MAKE_UNVERIFIED = $(value UNVERIFIED)
restore-%: ## Restore a site: make restore-cliente.exemplo.com DB_BACKUP=... [FILES_BACKUP=...] [UNVERIFIED=1]
	@if [ -z "$$JERP_MAKE_DB" ]; then echo "DB_BACKUP=<dump in the site's backup folder> is required" >&2; exit 2; fi
	$(JERPCTL) enqueue restore "$$JERP_MAKE_SITE" --db "$$JERP_MAKE_DB" $${JERP_MAKE_FILES:+--files "$$JERP_MAKE_FILES"} \
		$${JERP_MAKE_UNVERIFIED:+--unverified} --wait

migrate: ## Migrate every site after a release (canary first, automatic restore on failure)
	$(JERPCTL) enqueue migrate-all --wait

release: export JERP_MAKE_TAG = $(value TAG)
release: ## Release an image tag to every site (deploy, migrate, smoke-test; rolled back on failure): make release TAG=<short sha>
	@if [ -z "$$JERP_MAKE_TAG" ]; then echo "TAG=<immutable image tag> is required" >&2; exit 2; fi
	$(JERPCTL) enqueue release "$$JERP_MAKE_TAG" --wait

rollback: ## Go back to the previous immutable tag that passed a release, migrate and smoke-test
	$(JERPCTL) enqueue rollback --wait

logs: ## Follow the logs of the jobs stack (PLATFORM logs: make logs JOBS="$(PLATFORM)")
	$(COMPOSE) $(JOBS) logs -f --tail=200

up: ## Start the platform stack, then the jobs stack beside it
	$(COMPOSE) $(PLATFORM) up -d
	$(COMPOSE) $(JOBS) up -d

down: ## Stop the jobs stack, then the platform stack (volumes are kept)
	$(COMPOSE) $(JOBS) down
	$(COMPOSE) $(PLATFORM) down

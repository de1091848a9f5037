# Developer and runbook entry points. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTEST ?= $(VENV)/bin/pytest
PYTEST_ARGS ?=

.PHONY: help test services images

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

test: services images ## Start the test services, then run pytest (extra arguments: PYTEST_ARGS=...)
	$(PYTEST) $(PYTEST_ARGS)

services: ## Start the private Redis and MariaDB the tests use (tests/services/up.sh)
	tests/services/up.sh

images: ## Build the test images (tests/images/build.sh)
	tests/images/build.sh

PYTHON ?= python3

.PHONY: test lint

## Whole suite: unit tests on the host, kernel tests in User-Mode Linux.
test:
	PYTHON=$(PYTHON) tests/run-all

lint:
	$(PYTHON) -m ruff check .

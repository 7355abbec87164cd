# Two entry points for a fresh machine: `make demo` (train the digits default), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo lint test
setup: $(VENV)/.installed

# The package alone: what `imloss` needs to train (the demo).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .
	touch $@

# The test tools on top (pytest, ruff, psycopg, selenium, triton).
$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/imloss train recipes/digits.toml
	@echo "imloss is installed in $(VENV): run 'source $(VENV)/bin/activate' to type imloss (or use $(VENV)/bin/imloss)"

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

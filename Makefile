# The two commands of the README's quickstart. Both create .venv if missing and install into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/arrcoc demo

test: install
	$(VENV)/bin/ruff check arrcoc data callbacks tests
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check arrcoc data callbacks tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

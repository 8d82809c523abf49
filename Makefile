# `make demo` and `make test` are the only two set-up commands: each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) run_all.py pretrain --preset tiny

# pytest exits 5 when nothing is collected (e.g. a filtered run): not a failure
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests || [ $$? -eq 5 ]

clean:
	rm -rf work results/runs results/tables plots/out

# `make demo` and `make test` are the only two set-up commands: each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e . --no-deps  # the suite itself (pyproject.toml): imports from any folder
	touch $@

install: $(VENV)/.installed

# every ablation at the tiny preset, 3 seeds (pretraining, linear probe, kNN, Figure 9's fine-tunes),
# then tables, figures, report; `make demo DEMO_ARGS="--seeds 1"` for a quick look
DEMO_ARGS ?=
demo: install
	$(PY) run_all.py demo --preset tiny $(DEMO_ARGS)

# As root (CI) the system packages are installed, so their tests must run rather than skip.
REQUIRE_SYSTEM_DEPS := $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)

# pytest exits 5 when nothing is collected (e.g. a filtered run): not a failure
test: install
	scripts/setup_test_deps.sh
	MAE_REQUIRE_SLURM=$(REQUIRE_SYSTEM_DEPS) MAE_REQUIRE_FFCV=$(REQUIRE_SYSTEM_DEPS) MAE_REQUIRE_MOUNT=$(REQUIRE_SYSTEM_DEPS) \
		$(PY) -m pytest -q $(PYTEST_ARGS) tests || [ $$? -eq 5 ]

clean:
	rm -rf work results/runs results/tables results/report plots/out

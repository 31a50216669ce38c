# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install pride into it first.
#
# CPU machines install the CPU build of torch pinned below. On a GPU machine, install the
# CUDA build that matches your driver instead, e.g.
#   make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup setup-test demo test test-slow readme-figures check-readme constraints clean

# setup: pride and what it needs to run (what `make demo` uses); setup-test adds the test extras
# (TRL, the official evaluation tools, real tokenizers, the trackers) for `make test`.
setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

# constraints.txt: the versions CI tested (regenerate with `make constraints` after an upgrade
# that passes `make test`), so a fresh clone next month installs what passed, not what is newest.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

constraints: setup-test
	$(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|triton|nvidia-)' > constraints.txt

demo: setup
	$(VENV)/bin/pride demo

# make test: everything but the end-to-end runs marked slow (minutes on 2 cores); CI runs both
test: setup-test
	$(PY) -m pytest -m "not slow"

test-slow: setup-test
	$(PY) -m pytest -m slow

# the README's demo table (three full demo runs, about 8 minutes); check-readme: seed 0 only
readme-figures: setup
	$(PY) benchmarks/readme_figures.py

check-readme: setup
	$(PY) benchmarks/readme_figures.py --check

clean:
	rm -rf $(VENV) runs .pytest_cache

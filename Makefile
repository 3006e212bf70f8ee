# Fresh machine: `make demo` or `make test`; each creates .venv (python3 -m venv + pip) when missing.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
JOBS ?= 2

.PHONY: venv demo test bench golden clean

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[demo,test,bench]'
	touch $(INSTALLED)

venv: $(INSTALLED)

demo: venv
	$(VENV)/bin/torchprobe rf mnist_demo.model:Net --input 1,28,28

test: venv
	$(PYTHON) -m pytest -q -n $(JOBS)

bench: venv
	$(PYTHON) bench/vs_torchinfo.py

# Rewrite the expected-output files after a deliberate change of the rendering.
golden: venv
	$(PYTHON) -m pytest -q tests --update-golden

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

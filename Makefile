# Two commands from a fresh machine with Python 3.11:  `make demo`  and  `make test`.
# GPU users: create .venv and install their CUDA build of torch into it first; `make` keeps it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_CONFIG ?= config/demo_mbf_w8a8.py

.PHONY: venv assets demo test clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

assets: venv
	$(PY) -m tools.fetch_assets

demo: assets
	$(PY) -m tools.run_demo $(DEMO_CONFIG)

test: assets
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)

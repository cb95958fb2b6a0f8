# Two commands from a fresh machine with Python 3.11:  `make demo`  and  `make test`.
# torch comes from pip's index: on plain PyPI (Linux) that is a CUDA build of several GB; for the CPU build give
# TORCH_INDEX=https://download.pytorch.org/whl/cpu.  GPU users with a CUDA torch in .venv already: `make` keeps it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
DEMO_CONFIGS ?= config/demo_mbf_w8a8.py
DEMO_FALLBACK ?= config/demo_dlib_w8a8.py
SEEDS ?=
ALL_DEMO_CONFIGS := $(foreach t,mbf dlib faceplugin,$(foreach b,w8a8 w6a6 w4a4 mixed,config/demo_$(t)_$(b).py))

.PHONY: venv assets demo demo-all test gpu-check clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -r requirements.txt
	touch $@

assets: venv
	$(PY) -m tools.fetch_assets

# Fetch what each demo config needs and distil it (resume=true: a finished run is not redone, an interrupted
# one continues, an output folder holding a run of other settings is an error naming them), then compare
# teacher, calibration-only baseline, distilled student and the shipped int8 ONNX on real photos.  Without
# npm the npm teachers are skipped (said so) and the pip-only dlib teacher runs instead.
demo: venv
	$(PY) -m lab.demo $(DEMO_CONFIGS) --fallback $(DEMO_FALLBACK) --out work_dirs/demo_report $(if $(SEEDS),--seeds $(SEEDS))

# Every demo config over three seeds: the report gives each score's mean and spread, and claims only beyond it.
demo-all: DEMO_CONFIGS := $(ALL_DEMO_CONFIGS)
demo-all: SEEDS := 0 1 2
demo-all: demo

test: assets
	$(PY) -m pytest -q

# The GPU path in one table, at most 8 minutes on one GPU (docs/gpu.md): with whatever python3 holds a CUDA torch,
# no venv, no network; without CUDA the same stages at tiny size.  GPU_CHECK_ARGS="--assets DIR --work DIR".
gpu-check:
	python3 -m tools.gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)

# Two commands: `make run` (install, start the platform, run the demo) and `make test` (install, run the tests).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install run demo down test unit integration protos check-protos

install: $(STAMP)

$(STAMP): pyproject.toml scripts/patch_torchvision.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	# bench: the benchmarks' plotting and CPU accounting, so their unit tests run too.
	$(PIP) install -e ".[cpu,models,dev,bench]"
	# torchaudio/torchcodec come from PyPI as CUDA builds that cannot load beside the CPU torch, and nothing needs
	# them: the server decodes and resamples audio itself (soundfile + soxr).
	$(PIP) uninstall -y -q torchaudio torchcodec || true
	# timm provides Gemma 3n's MobileNetV5 vision tower; --no-deps keeps pip from swapping our torch/torchvision.
	$(PIP) install -q --no-deps "timm>=1.0.20"
	# torchvision from PyPI is CUDA-linked; Gemma3ImageProcessor imports it. See the script for the fix.
	$(PY) scripts/patch_torchvision.py
	touch $(STAMP)

run: install
	$(VENV)/bin/gemma-serving build-models
	$(VENV)/bin/gemma-serving up
	$(VENV)/bin/gemma-serving demo

demo: install
	$(VENV)/bin/gemma-serving demo

down:
	$(VENV)/bin/gemma-serving down

protos: install
	$(PY) scripts/gen_protos.py

check-protos: install
	$(PY) scripts/gen_protos.py --check

unit: install
	$(PY) -m pytest tests/unit -q

integration: install
	$(PY) -m pytest tests/integration -v -s

test: install check-protos
	$(PY) -m pytest -v -rs --durations=15

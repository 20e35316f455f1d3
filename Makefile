# Two commands do all set-up on a fresh machine:  make quickstart  |  make test
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export PYTHONPATH := $(CURDIR)

.PHONY: help setup quickstart test test-all bench clean-cache

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

setup: .venv/.installed  ## create .venv, install pinned requirements, fetch + verify the embedded assets (idempotent)
	$(PY) -m astro.assets fetch

quickstart: setup  ## the main job: FP/RTN/GPTQ/MagR+GPTQ/Astro+GPTQ on SmolLM2-135M, W3 g64 (~15 min, 2 cores)
	$(PY) -m experiments.quickstart $(ARGS)

test: setup  ## the test suite (CPU, a few minutes)
	$(PY) -m pytest -q tests $(ARGS)

bench: setup  ## per-layer method times at SmolLM2 shapes; PGD iteration cost vs its matmul
	$(PY) -m benchmarks.layer_times $(ARGS)

clean-cache:  ## remove the fetched assets and converted models ($$ASTRO_CACHE or ~/.cache/astro)
	rm -rf "$${ASTRO_CACHE:-$$HOME/.cache/astro}"

# Two commands do all set-up on a fresh machine:  make quickstart  |  make test
# Experiments: make help (every target), make experiments (what each reproduces), SCALE=embedded|paper.
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export PYTHONPATH := $(CURDIR)

SCALE ?= embedded
# pytest-xdist workers for make test / test-all (one torch thread each: tests/conftest.py)
TEST_WORKERS ?= 2
RUN := $(PY) -m experiments.run
# $(call sweep,<experiment>): the experiment's grid at $(SCALE); finished runs are skipped (resumable)
sweep = $(RUN) -m experiment=$(1) scale=$(SCALE) $(ARGS)
# $(call analyze,<module>): the analysis script, reading only the results store (same ARGS: same grid)
analyze = $(PY) -m analysis.$(1) --scale $(SCALE) $(ARGS)

.PHONY: help setup setup-gemma bench-solver bench-shapes bench-loop bench-lwc export quickstart test test-all test-slurm lint bench clean-cache run sweep experiments status \
	reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5 reproduce-table6 \
	reproduce-table7 run-table1 run-table3 run-table7 study claims figures fig1-outliers fig2-landscape fig3-efficiency sweep-beta ablation-alpha solver-study \
	calib-study calib-sink w2-groups beyond-study beta-auto beta-strength rehearsal

help:  ## list the targets (experiment targets take SCALE=embedded|paper, default embedded, and ARGS='overrides')
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 20

.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

setup: .venv/.installed  ## create .venv, install pinned requirements, fetch + verify the embedded assets (idempotent)
	$(PY) -m astro.assets fetch

setup-gemma: setup  ## fetch + convert gemma3-270m (Gemma terms; the embedded second model of Tables 1, 2, 4, 6)
	$(PY) -m astro.assets fetch gemma3-gguf

quickstart: setup  ## the main job: FP/RTN/GPTQ/MagR+GPTQ/Astro+GPTQ on SmolLM2-135M, W3 g64 (~15 min, 2 cores)
	$(PY) -m experiments.quickstart $(ARGS)

test: setup  ## lint, then the test suite without the slow end-to-end checks (CPU, under 5 minutes)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests $(ARGS)

test-all: setup  ## lint, then every test, the slow end-to-end checks included (CPU, about 10 minutes)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(ARGS)

test-slurm: setup  ## the SLURM tests on a throwaway one-node cluster (installs Debian's slurm + munge when missing; root)
	bash tests/slurm/cluster.sh $(PY) -m pytest -q -p no:xdist -m slurm tests $(ARGS)

lint: setup  ## ruff check (the pinned version; config in pyproject.toml)
	$(PY) -m ruff check . $(ARGS)

bench: setup  ## per-layer method times at SmolLM2 shapes; PGD iteration cost vs its matmul
	$(PY) -m benchmarks.layer_times $(ARGS)

export: setup  ## Astro+GPTQ and GPTQ W4 g64 on SmolLM2 -> compressed-tensors checkpoints, reload check, forward-time ratio
	$(PY) -m benchmarks.export_forward $(ARGS)

bench-solver: setup  ## pgd vs fista on Astro's per-layer objective (SmolLM2 H + synthetic) -> results/bench_solver.*
	$(PY) -m benchmarks.solver $(ARGS)

bench-shapes: setup  ## per-block method time + peak memory at LLaMA-2-7B/70B shapes (synthetic W, H) -> results/bench_shapes.*
	$(PY) -m benchmarks.shapes $(ARGS)

bench-lwc: setup  ## OmniQuant's block-output MSE over training per LWC schedule, on SmolLM2 blocks -> results/bench_lwc.*
	$(PY) -m benchmarks.lwc_schedule $(ARGS)

bench-loop: setup  ## block loop forwards: residual stream rebuilt from the writers' inputs vs the block re-run -> results/bench_loop.*
	$(PY) -m benchmarks.loop_forwards $(ARGS)

clean-cache:  ## remove the fetched assets and converted models ($$ASTRO_CACHE or ~/.cache/astro)
	rm -rf "$${ASTRO_CACHE:-$$HOME/.cache/astro}"

run: setup  ## one run: make run ARGS='model=smollm2-135m quant=w3g64 method=astro_gptq method.beta=3e-5'
	$(RUN) $(ARGS)

sweep: setup  ## any sweep: make sweep ARGS='model=smollm2-135m method=gptq,astro_gptq quant=w2g64,w3g64'
	$(RUN) -m $(ARGS)

proxy-tasks: setup  ## generate the offline PROXY tasks (wiki_lastword, wiki_nextsent_mc) into $$ASTRO_CACHE/tasks
	$(PY) -m astro.proxy_tasks $(ARGS)

status:  ## which points of an experiment's grid are recorded: make status EXP=table1 [SCALE=paper]
	$(PY) -m experiments.grid $(EXP) --scale $(SCALE) $(ARGS)

experiments:  ## list the experiment configs with the artifact each reproduces
	@grep -h '^  artifact:' conf/experiment/*.yaml | sed -E 's/^  artifact: "?//; s/"$$//'

reproduce-table1: setup  ## Table 1 (test PPL, chosen betas, claims) from the archive's records + results/store; runs nothing
	$(call analyze,table1) --archive

run-table1: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## Table 1's sweeps (table1 + Table 3's tuning), the points missing in this machine's regime, then the table
	$(call sweep,table1)
	$(call sweep,table3)
	$(call analyze,table1) --archive

study: setup setup-gemma  ## the embedded-v2 evidence setting by setting (conf/study/embedded_v2.yaml; resumable: run two side by side, one per core)
	$(PY) -m experiments.study conf/study/embedded_v2.yaml $(ARGS)

claims: setup  ## every claim per setting and test corpus (Tables 1, 7, beyond study) from the archive + results/store
	$(call analyze,claims) --archive

reproduce-table2: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## Table 2: zero/few-shot accuracy at W3 (FP, MagR, Astro)
	$(call sweep,table2)
	$(call analyze,table2)

reproduce-table3: setup  ## Table 3: the beta sweeps per setting (validation and test PPL, the chosen beta) from the archive + results/store
	$(call analyze,table3) --archive

run-table3: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## Table 3's sweeps (MagR/Astro+GPTQ x beta grid x settings x seeds), then the table
	$(call sweep,table3)
	$(call analyze,table3) --archive

reproduce-table4: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## Table 4: PPL of the reconstructed, unquantized weights vs FP
	$(call sweep,table4)
	$(call analyze,table4)

reproduce-table5: setup  ## Table 5: per-group max|w| before/after Astro in one layer
	$(call sweep,table5)
	$(call analyze,table5)

reproduce-table6: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## Table 6: second model family (LLaMA-3.1-8B; embedded: gemma3-270m) at W3
	$(call sweep,table6)
	$(call analyze,table2) --table table6

reproduce-table7: setup  ## Table 7: Astro on RTN (each at its beta chosen on validation) from the archive + results/store
	$(call analyze,table7) --archive

run-table7: setup  ## Table 7's sweep (RTN, MagR+RTN, Astro+RTN x beta grid x seeds), then the table
	$(call sweep,table7)
	$(call analyze,table7) --archive

beyond-study: setup  ## beyond the paper: Astro+GPTQ composed with AWQ / QuaRot / SpinQuant (beta=auto) vs their parts and each family's best (3 seeds)
	$(call sweep,beyond_study)
	$(call analyze,beyond_study)

beta-auto: setup  ## method.beta=auto (per-layer beta on held-out windows) for Astro+GPTQ/RTN vs the best global beta (3 seeds)
	$(call sweep,beta_auto)
	$(call analyze,beta_auto)

figures: fig1-outliers fig2-landscape fig3-efficiency  ## all three figures

fig1-outliers: setup  ## Figure 1: weight/activation magnitudes of one layer, before and after Astro
	$(call sweep,fig1_outliers)
	$(PY) -m experiments.outliers --scale $(SCALE) $(ARGS)
	$(call analyze,fig1_outliers)
	$(call analyze,fig_bound)

fig2-landscape: setup  ## Figure 2: loss landscape around the original and reconstructed weights
	$(call sweep,fig2_landscape)
	$(PY) -m experiments.landscape --scale $(SCALE) $(ARGS)
	$(call analyze,fig2_landscape)

fig3-efficiency: setup  ## Figure 3: PPL vs total quantization time per method (Table 1's and Table 7's W3 points) from the archive + results/store
	$(call analyze,fig3_efficiency) --archive

sweep-beta: setup  ## the paper's beta grid (5e-6 ... 5e-4) x alpha activation|uniform (shares Table 3's records)
	$(call sweep,sweep_beta)
	$(call analyze,table3)

beta-strength: setup  ## how much the reconstruction acts per beta x iterations on real layers (shrink, error vs GPTQ alone)
	$(PY) -m experiments.beta_strength --scale $(SCALE) $(ARGS)
	$(call analyze,beta_strength)

solver-study: setup  ## solver study: PPL vs Astro time, pgd-200 (paper) vs fista-50/200/to-tolerance at W3 and W2 (+ pgd-40)
	$(call sweep,solver_study)
	$(call analyze,solver_study)

ablation-alpha: setup  ## activation vs uniform alpha_k at W2, W3, W4
	$(call sweep,ablation_alpha)
	$(call analyze,ablation_alpha)

calib-study: setup  ## PPL + held-out layer errors vs calibration tokens (GPTQ, MagR, Astro, AWQ; 3 seeds); FP and RTN once
	$(RUN) -m experiment=calib_study scale=$(SCALE) method=fp,rtn calib.n_samples=8 calib.seed=0 $(ARGS)
	$(call sweep,calib_study)
	$(call analyze,calib_study)

calib-sink: setup  ## GPTQ with the first position of each calibration sequence weighted 1 / 0.1 / 0 in H (3 seeds)
	$(call sweep,calib_sink)
	$(call analyze,calib_study) --sink

w2-groups: setup  ## W2 at g64 / g32 / g16 (RTN, GPTQ, MagR, Astro, AWQ, AWQ+GPTQ): where W2 stops collapsing
	$(call sweep,w2_groups)
	$(call analyze,w2_groups)

rehearsal: setup  ## dress rehearsal, no hub: random-weight LLaMA-2 shape, GPTQ + Astro+GPTQ W3 g128 -> results/rehearsal/ (paper: 7B, CUDA)
	$(call sweep,rehearsal)
	$(PY) -m experiments.grid rehearsal --scale $(SCALE) $(ARGS)

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

.PHONY: help power setup setup-gemma bench-solver bench-shapes bench-loop bench-lwc export quickstart test test-all test-slow chromium test-slurm lint bench clean-cache run sweep experiments status results report report-publish proxy-tasks \
	reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5 reproduce-table6 \
	reproduce-table7 run-table1 run-table3 run-table7 study claims figures fig1-outliers fig2-landscape fig3-efficiency sweep-beta ablation-alpha solver-study \
	calib-study calib-sink w2-groups beyond-study beta-auto beta-strength rehearsal

help:  ## [inspect] this list, grouped (experiment targets take SCALE=embedded|paper, default embedded, and ARGS='overrides')
	@for group in run reproduce study inspect develop; do \
	  printf '\n%s\n' "$$group"; \
	  grep -E "^[a-z0-9-]+:.*## \[$$group\] " $(MAKEFILE_LIST) | sed -E 's/:.*## \[[a-z]+\] /\t/' | expand -t 20; \
	done
	@printf '\nTimes are on a 2-core CPU where measured (docs/ names the run); SCALE=paper runs the paper grids on a GPU.\n'

.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

setup: .venv/.installed  ## [develop] .venv, pinned requirements, the embedded model and texts, checked by sha256 (fresh clone: 3.5 min)
	$(PY) -m experiments.fetch

setup-gemma: setup  ## [develop] fetch + convert gemma3-270m (Gemma terms; the embedded second model of Tables 1-4, 6)
	$(PY) -m experiments.fetch gemma3-gguf

quickstart: setup  ## [run] FP/RTN/GPTQ/MagR+GPTQ/Astro+GPTQ, SmolLM2 W3 g64, reduced calibration, beside Table 1's cells (~10 min)
	$(PY) -m experiments.quickstart $(ARGS)

test: setup  ## [develop] lint, then the tests without the slow end-to-end checks (fresh clone, 2 cores: 4.5 min)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests $(ARGS)

test-all: setup chromium  ## [develop] lint, then every test, slow ones included (2 cores: about 10 min)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(ARGS)

test-slow: setup chromium  ## [develop] only the tests marked slow: end-to-end checks, the report in headless Chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow tests $(ARGS)

chromium:  ## [develop] Debian's chromium for the report's browser check, installed when missing (root)
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test-slurm: setup  ## [develop] the SLURM tests on a throwaway one-node cluster (installs Debian's slurm + munge; root)
	bash tests/slurm/cluster.sh $(PY) -m pytest -q -p no:xdist -m slurm tests $(ARGS)

lint: setup  ## [develop] ruff check (the pinned version; config in pyproject.toml)
	$(PY) -m ruff check . $(ARGS)

bench: setup  ## [develop] per-layer method times at SmolLM2 shapes, then whole blocks: Astro+GPTQ/GPTQ, beta=auto/fixed, solver/PGD-200 (~15 min)
	$(PY) -m benchmarks.layer_times $(ARGS)

export: setup  ## [run] Astro+GPTQ and GPTQ checkpoints (compressed-tensors), embedded protocol, W4 g64: reload, forward ratio (not timed)
	$(PY) -m benchmarks.export_forward $(ARGS)

bench-solver: setup  ## [develop] pgd vs fista on Astro's per-layer objective (SmolLM2 H + synthetic) -> results/bench_solver.* (not timed)
	$(PY) -m benchmarks.solver $(ARGS)

bench-shapes: setup  ## [develop] per-block time + peak memory at LLaMA-2-7B/70B shapes (CPU: 7B only, 8.6 min; ARGS='--device cuda')
	$(PY) -m benchmarks.shapes $(ARGS)

bench-lwc: setup  ## [develop] OmniQuant's block-output MSE over training per LWC schedule, SmolLM2 blocks -> results/bench_lwc.* (not timed)
	$(PY) -m benchmarks.lwc_schedule $(ARGS)

bench-loop: setup  ## [develop] the block loop's forwards: stream rebuilt from the writers' inputs vs the block re-run (embedded-v1, loaded: 13 min)
	$(PY) -m benchmarks.loop_forwards $(ARGS)

clean-cache:  ## [develop] remove the fetched assets and converted models (ASTRO_CACHE, default ~/.cache/astro)
	rm -rf "$${ASTRO_CACHE:-$$HOME/.cache/astro}"

run: setup  ## [run] one run: make run ARGS='quant=w3g64 method=astro_gptq method.beta=1e-3' (embedded: 5-25 min)
	$(RUN) $(ARGS)

sweep: setup  ## [run] any sweep: make sweep ARGS='method=gptq,astro_gptq quant=w2g16,w3g64' (resumes, skips recorded points)
	$(RUN) -m $(ARGS)

proxy-tasks: setup  ## [develop] generate the offline PROXY tasks (wiki_lastword, wiki_nextsent_mc) into the asset cache (not timed)
	$(PY) -m astro.proxy_tasks $(ARGS)

results:  ## [inspect] the store's records as a table, filtered: make results ARGS='method=astro_gptq quant=w3g64 --archive'
	$(PY) -m experiments.results $(ARGS)

report: setup  ## [reproduce] every table and figure from archive/ -> results/report/index.html (about 2 min)
	$(PY) -m analysis.report $(ARGS)

report-publish: setup  ## [reproduce] the report into docs/report/ (tracked) and README.md's results block from it (about 2 min)
	$(PY) -m analysis.report --publish $(ARGS)

status:  ## [inspect] which points of an experiment's grid are recorded here, in which regime: make status EXP=table1
	$(PY) -m experiments.grid $(EXP) --scale $(SCALE) $(ARGS)

experiments:  ## [inspect] the experiment configs and the paper artifact each reproduces
	@grep -h '^  artifact:' conf/experiment/*.yaml | sed -E 's/^  artifact: "?//; s/"$$//'

reproduce-table1: setup  ## [reproduce] Table 1, the chosen betas, its claims: reads archive/ + results/store, runs nothing (about 1 min)
	$(call analyze,table1) --archive

run-table1: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## [study] Table 1's and Table 3's sweeps (missing points, this machine's regime), then Table 1 (embedded: days of CPU)
	$(call sweep,table1)
	$(call sweep,table3)
	$(call analyze,table1) --archive

study: setup setup-gemma  ## [study] the embedded-v2 evidence setting by setting (conf/study/embedded_v2.yaml; resumable: run two side by side, one per core; days of CPU)
	$(PY) -m experiments.study conf/study/embedded_v2.yaml $(ARGS)

power: setup  ## [reproduce] how many seeds a verdict needs: each claim's spread, the gap resolved at 80% power, what numerics add
	$(PY) -m analysis.power $(ARGS)

claims: setup  ## [reproduce] every claim per setting and test text (Tables 1, 7, beyond study): archive/ + results/store (1-2 min)
	$(call analyze,claims) --archive

reproduce-table2: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## [study] Table 2: zero/few-shot accuracy at W3, FP/MagR/Astro (embedded: offline proxy tasks); runs its sweep (not timed)
	$(call sweep,table2)
	$(call analyze,table2)

reproduce-table3: setup  ## [reproduce] Table 3: beta sweeps per setting, validation and test PPL, the chosen beta: archive/ + results/store (1 min)
	$(call analyze,table3) --archive

run-table3: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## [study] Table 3's sweeps (MagR/Astro+GPTQ x 4 betas x 3 settings x 2 models x 3 seeds), then the table (days of CPU)
	$(call sweep,table3)
	$(call analyze,table3) --archive

reproduce-table4: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## [study] Table 4: PPL of the reconstructed, unquantized weights vs FP; runs its sweep (not timed)
	$(call sweep,table4)
	$(call analyze,table4)

reproduce-table5: setup  ## [study] Table 5: per-group max|w| before/after Astro in one layer; runs its sweep (not timed)
	$(call sweep,table5)
	$(call analyze,table5)

reproduce-table6: setup $(if $(filter embedded,$(SCALE)),setup-gemma)  ## [study] Table 6: the second model family at W3 (paper: LLaMA-3.1-8B; embedded: gemma3-270m); runs its sweep (not timed)
	$(call sweep,table6)
	$(call analyze,table2) --table table6

reproduce-table7: setup  ## [reproduce] Table 7: Astro on RTN, each at its beta chosen on validation: archive/ + results/store (1 min)
	$(call analyze,table7) --archive

run-table7: setup  ## [study] Table 7's sweep (RTN, MagR+RTN, Astro+RTN x 4 betas x 3 seeds, SmolLM2 W3 g64), then the table (not timed)
	$(call sweep,table7)
	$(call analyze,table7) --archive

beyond-study: setup  ## [study] Astro+GPTQ composed with AWQ / QuaRot / SpinQuant (beta=auto) vs their parts (embedded-v1: 48 runs, 20-28 min each)
	$(call sweep,beyond_study)
	$(call analyze,beyond_study)

beta-auto: setup  ## [study] method.beta=auto (per-layer beta on held-out windows) for Astro+GPTQ/RTN vs the chosen global beta (not timed)
	$(call sweep,beta_auto)
	$(call analyze,beta_auto)

figures: fig1-outliers fig2-landscape fig3-efficiency  ## [reproduce] Figures 1, 2 and 3

fig1-outliers: setup  ## [study] Figure 1: one layer's |W|, |X| and what Astro removes, at the beta Table 1 chose; runs its probe (not timed)
	$(call sweep,fig1_outliers)
	$(PY) -m experiments.outliers --archive --scale $(SCALE) $(ARGS)
	$(call analyze,fig1_outliers) --archive
	$(call analyze,fig_bound)

fig2-landscape: setup  ## [study] Figure 2: loss landscape around the original and reconstructed weights; runs its probe (not timed)
	$(call sweep,fig2_landscape)
	$(PY) -m experiments.landscape --scale $(SCALE) $(ARGS)
	$(call analyze,fig2_landscape)

fig3-efficiency: setup  ## [reproduce] Figure 3: PPL vs quantization time, Table 1's and Table 7's W3 cells: archive/ + results/store (2 min)
	$(call analyze,fig3_efficiency) --archive

sweep-beta: setup  ## [study] the scale's beta grid (paper: 5e-6 ... 5e-4; embedded: 5e-5 ... 1e-2) x alpha activation|uniform (not timed)
	$(call sweep,sweep_beta)
	$(call analyze,table3)

beta-strength: setup  ## [study] how much the reconstruction acts per beta x iterations on six real layers (embedded-v1: 31 min)
	$(PY) -m experiments.beta_strength --scale $(SCALE) $(ARGS)
	$(call analyze,beta_strength)

solver-study: setup  ## [study] PPL vs Astro time, pgd-200 (paper) vs fista-50/200/to-tolerance, W3 and W2 (embedded-v1: about 4 h)
	$(call sweep,solver_study)
	$(call analyze,solver_study)

ablation-alpha: setup  ## [study] activation vs uniform alpha_k at W2, W3, W4 (not timed)
	$(call sweep,ablation_alpha)
	$(call analyze,ablation_alpha)

calib-study: setup  ## [study] PPL + held-out layer errors vs calibration tokens, 8/32/128 x 512 (GPTQ, MagR, Astro, AWQ; 3 seeds; not timed)
	$(RUN) -m experiment=calib_study scale=$(SCALE) method=fp,rtn calib.n_samples=8 calib.seed=0 $(ARGS)
	$(call sweep,calib_study)
	$(call analyze,calib_study)

calib-sink: setup  ## [study] GPTQ with the first position of each calibration sequence weighted 1 / 0.1 / 0 in H (3 seeds; not timed)
	$(call sweep,calib_sink)
	$(call analyze,calib_study) --sink

w2-groups: setup  ## [study] W2 at g64 / g32 / g16 (RTN, GPTQ, MagR, Astro, AWQ, AWQ+GPTQ): where W2 stops collapsing (not timed)
	$(call sweep,w2_groups)
	$(call analyze,w2_groups)

rehearsal: setup  ## [run] dress rehearsal, no hub: random-weight LLaMA-2 shape, GPTQ + Astro+GPTQ W3 g128 (embedded: seconds)
	$(call sweep,rehearsal)
	$(PY) -m experiments.grid rehearsal --scale $(SCALE) $(ARGS)

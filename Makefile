# Two commands for a newcomer: `make reproduce` and `make test` (README.md).
# Both create the local CPU environment in .venv when it is missing or out of date.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
# Where this machine's pip does not find the CPU wheel by itself, point it there, e.g.
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" (check-cpu-only fails otherwise).
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Full run of the embedded default; papermill_runs/<set>.yaml names notebooks and parameters.
RUNSET ?= papermill_runs/toy-cpu.yaml
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: env reproduce test test-unit test-notebooks check-cpu-only clean-runs train-toy bench

env: $(STAMP)

# torch is installed first and alone: `torch==2.13.0` is then satisfied by the CPU build, so no
# later requirement can pull the CUDA build and its nvidia-* packages. check-cpu-only proves it.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev,text]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	$(BIN)/python -m acdc_lib.envcheck --cpu-only
	touch $(STAMP)

check-cpu-only: env
	$(BIN)/python -m acdc_lib.envcheck --cpu-only

# Notebooks at once and torch threads per notebook. The toy models' kernels keep a second thread only
# half busy (1.5x faster on 2 threads than on 1, measured), so on 2 cores two notebooks of one thread
# each finish sooner than one after another on two (acdc_lib.runs --jobs). The thread count is fixed
# because CPU kernels split their sums by it, which moves the last float bits (a few toy pixels by one
# grey level) and through a re-encoded frame can change later ones; a fixed count makes the committed
# figures reproducible on any core count, whatever REPRO_JOBS is.
REPRO_JOBS ?= 2
REPRO_THREADS ?= 1
# CPU kernels are also chosen by instruction set, and AVX2 and AVX512 kernels (torch's own, oneDNN's and
# MKL's) round differently, so figures are byte-reproducible only between runs with the same kernels (each
# notebook's setup line prints them). REPRO_ISA=avx2, the default, pins all three to AVX2, which any x86-64
# machine of the last decade has, so the committed figures are meant to come from such a run and to come back
# byte for byte anywhere. It costs speed on AVX512 CPUs (the toy UNet about 40% slower); `REPRO_ISA=` unpins
# it, and the setup lines then say that the figures may differ in the last digits.
REPRO_ISA ?= avx2
ISA_ENV := $(if $(REPRO_ISA),ATEN_CPU_CAPABILITY=$(REPRO_ISA) ONEDNN_MAX_CPU_ISA=$(shell echo $(REPRO_ISA) | tr a-z A-Z) MKL_CBWR=$(shell echo $(REPRO_ISA) | tr a-z A-Z),)
reproduce: env
	OMP_NUM_THREADS=$(REPRO_THREADS) $(ISA_ENV) $(BIN)/python -m acdc_lib.runs $(RUNSET) --jobs $(REPRO_JOBS)

test: test-unit test-notebooks

test-unit: env
	$(BIN)/python -m pytest -q tests/unit

# Every notebook, with its default (smoke) parameters, under nbval; check cells compare outputs.
test-notebooks: env
	@if ls notebooks/*.ipynb > /dev/null 2>&1; then \
	  $(BIN)/python -m pytest -q --nbval-lax -p no:cacheprovider --nbval-cell-timeout=600 notebooks/; \
	else echo "no notebooks yet"; fi

# Retrain every toy model from scratch, seeded, into TOY_OUT (default: the shipped checkpoints, which
# git then shows as changed), then measure the gates (gates.json beside them); the train split is
# regenerated from data/stories/MANIFEST.json first.
TOY_OUT ?= acdc_lib/toyworld/checkpoints
# Trainings at once (one process and one torch thread each): the VQ, the DM and its motion module on
# one core, the evaluator, the story ARMs and the video ARM on the other.
TOY_JOBS ?= 2
train-toy: env
	$(BIN)/python -m acdc_lib.toyworld.splits make-splits --check
	$(BIN)/python -m acdc_lib.toyworld.train all --out $(TOY_OUT) --jobs $(TOY_JOBS)
	$(BIN)/python -m acdc_lib.toyworld.gates --checkpoints $(TOY_OUT)

# Speed targets are checked by benchmarks that print ratios, never by timed unit tests. Each prints
# measured / target with PASS or FAIL and writes benchmarks/results/<name>.json (git-ignored); run them
# on a quiet machine, one at a time. bench_paper_scale runs its --quick default (a few minutes on 2 cores),
# then times the ARMs' eager against their compiled decode step on its 1B-sized LM (a few minutes more).
BENCHES := bench_render bench_correction bench_batching bench_arm_sampling bench_long_stories bench_paper_scale
bench: env
	@for b in $(BENCHES); do echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py || exit 1; echo; done

clean-runs:
	rm -rf papermill_runs/out figures/smoke

# Train -> export -> serve. Every target installs what it needs through `setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# the project's extras to install (the Docker images choose their own, e.g. EXTRAS=serve)
EXTRAS ?= dev,serve

CONFIG ?=
# the run folder: runs/<config's name> with a CONFIG, else runs/<data folder's name> for your own
# videos, else the synthetic default's; evaluate, export and serve given the same CONFIG (or, without
# one, DATA_ROOT) find it. `make demo` keeps runs/synthetic unless RUN is given.
RUN ?= $(if $(CONFIG),runs/$(basename $(notdir $(CONFIG))),$(if $(DATA_ROOT),runs/$(notdir $(abspath $(DATA_ROOT))),runs/synthetic))
SET ?=
DATA_ROOT ?=
GPUS ?= 1
# extra torchrun flags for multi-node, e.g. "--nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500"
TORCHRUN_ARGS ?= --standalone
PYTEST_ARGS ?=
# DRY_RUN=1: print the plan of `make train` (config, data, steps, lr, time) and train nothing
DRY_RUN ?=
MODEL_NAME ?= action
SERVE_WORKERS ?= 1
SERVE_BATCH ?= 1

TRAIN_ARGS = --run-dir "$(RUN)" $(if $(CONFIG),--config "$(CONFIG)") $(if $(DATA_ROOT),--data-root "$(DATA_ROOT)") $(if $(SET),--set $(SET))

.PHONY: demo setup train evaluate export serve serve-stop bench bench-accuracy bench-engines bench-generalization bench-supervised lint test clean-venv help

help:
	@echo "make demo                       the whole product on the synthetic default: data, train, export, serve, one request, stop"
	@echo "make setup                      create $(VENV) and install everything"
	@echo "make train [CONFIG=] [RUN=] [SET=\"k=v ...\"] [DATA_ROOT=] [GPUS=N] [DRY_RUN=1]"
	@echo "make evaluate RUN=runs/NAME     30-view test of a run's checkpoint"
	@echo "make export RUN=runs/NAME       student-only ONNX (+ TensorRT where present), manifest, .mar"
	@echo "make serve [RUN=] [MODEL_NAME=]  TorchServe on 127.0.0.1:8080 with RUN/export/model.mar"
	@echo "make serve-stop                  stop it"
	@echo "make bench [BENCH_GROUPS=...]    latency suites -> benchmarks/results/"
	@echo "make bench-accuracy             Table 1 in miniature on the synthetic data"
	@echo "make bench-engines              each engine and precision's accuracy on runs not at 100 % -> benchmarks/results/"
	@echo "make bench-generalization [SET=]  the own-data default vs FixMatch-RGB on motion families it was not tuned on"
	@echo "make bench-supervised [SET=]    the own-data default's network on those families with every label, supervised only"
	@echo "make gpu-check                  what only a GPU settles (environment, bf16 step, CUDA parity, latency)"
	@echo "make lint                       ruff (lint, format check) and mypy"
	@echo "make test                       lint, then the test suite (what CI runs)"

demo: setup
	$(BIN)/python -m serving.demo --run "$(if $(filter file,$(origin RUN)),runs/synthetic,$(RUN))" --model-name "$(MODEL_NAME)"

setup: $(VENV)/.installed

# torch is pinned and installed first so that the project's `torch>=...` requirement is
# already satisfied (an unpinned torch would pull several GB of CUDA packages).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	touch $@

train: setup
ifneq ($(filter-out 0,$(DRY_RUN)),)
	$(BIN)/python -m training train $(TRAIN_ARGS) --dry-run --processes $(GPUS)
else ifeq ($(GPUS),1)
	$(BIN)/python -m training train $(TRAIN_ARGS)
else
	$(BIN)/torchrun $(TORCHRUN_ARGS) --nproc_per_node=$(GPUS) -m training train $(TRAIN_ARGS)
endif

evaluate: setup
	$(BIN)/python -m training evaluate --run "$(RUN)"

export: setup
	$(BIN)/python -m export --run "$(RUN)"

serve: setup
	$(BIN)/python -m serving start --run "$(RUN)" --model-name "$(MODEL_NAME)" --workers $(SERVE_WORKERS) --batch-size $(SERVE_BATCH)

serve-stop: setup
	$(BIN)/python -m serving stop

# all groups by default; e.g. BENCH_GROUPS="no_added_cost backends"
BENCH_GROUPS ?=
bench: setup
	$(BIN)/python -m benchmarks.run $(if $(BENCH_GROUPS),--groups $(BENCH_GROUPS))

bench-accuracy: setup
	$(BIN)/python -m benchmarks.accuracy

# accuracy and speed of every inference engine and precision on runs not at 100 %
bench-engines: setup
	$(BIN)/python -m benchmarks.engines

# the own-data default against FixMatch-RGB on motion families it was not tuned on
bench-generalization: setup
	$(BIN)/python -m benchmarks.generalization $(if $(SET),--set $(SET))

bench-supervised: setup
	$(BIN)/python -m benchmarks.supervised $(if $(SET),--set $(SET))

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# What only a GPU settles, in one run of a few minutes (benchmarks/gpu_check.py): environment,
# bf16 vs fp32 training step at full size, NCCL + SyncBN, the CUDA backends against the CPU
# reference (TF32 on and off), auto's choice and memory, 30-view latency -> benchmarks/results/.
# Without a GPU it prints the environment, names what it skipped, writes nothing and exits 0.
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

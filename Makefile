# Two commands for a fresh machine: `make demo` and `make test`.
# Everything installs into ./.venv; the CPU build of torch is pinned and installed first so that
# no CUDA wheels are pulled on machines without a GPU.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nephi-installed
TORCH := torch==2.13.0
DEMO := demo_output

.PHONY: demo test install bench bench-recipe train-lung clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,interop]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m data_prep.synthetic_lung --out $(DEMO)/data --shape 64 64 64 --spacing 4 4 4 --motion-mm 14 --seed 0
	$(VENV)/bin/nephi-infer --pair $(DEMO)/data/exhale.nii.gz $(DEMO)/data/inhale.nii.gz \
		--mask $(DEMO)/data/inhale_mask.nii.gz \
		--landmarks $(DEMO)/data/inhale_points.csv \
		--moving-landmarks $(DEMO)/data/exhale_points.csv \
		--out $(DEMO)/result
	@echo "demo outputs in $(DEMO)/result (summary.json, warp.nii.gz, warped.nii.gz, ...)"

test: $(STAMP)
	$(PY) -m pytest -q

# `make train-lung`: train configs/lung_cpu.yaml (synthetic lung population, data built on first
# use) into runs/lung_cpu; `make bench` trains it first when the checkpoint is missing.
# `make bench`: peers benchmark (benchmarks/bench_peers.py -> benchmarks/results/), then the
# GradICON Jacobian benchmark. CHECKPOINT=path uses another checkpoint; BENCH_ARGS=--quick for a
# short smoke run.
BENCH_STAMP := $(VENV)/.nephi-bench-installed
LUNG_CKPT := runs/lung_cpu/checkpoints/best.pt
CHECKPOINT ?= $(LUNG_CKPT)
BENCH_ARGS ?=
ACCELERATE_CPU := --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

train-lung: $(LUNG_CKPT)

$(LUNG_CKPT): | $(STAMP)
	$(VENV)/bin/accelerate launch $(ACCELERATE_CPU) train/train.py --config configs/lung_cpu.yaml \
		--output-dir runs/lung_cpu $(if $(wildcard runs/lung_cpu/checkpoints/step_*.pt),--resume)

bench: $(BENCH_STAMP) $(CHECKPOINT)
	$(PY) benchmarks/bench_peers.py --checkpoint $(CHECKPOINT) $(BENCH_ARGS)
	$(PY) benchmarks/bench_jacobian.py

# `make bench-recipe`: the recipe of issue 13 (benchmarks/bench_recipe.py): a population of
# MNI152 head CT subjects (random affine + smooth deformation each), `nephi-prep scans`, 60 min
# of training of configs/heads_cpu.yaml on 2 CPU processes (skipped when done, resumed when
# interrupted), then 10 held-out pairs: nephi feed-forward, + 100 IO steps, ANTs SyN MI and CC
# 100x70x50 -> runs/recipe_heads/results.md. A smoke run: RECIPE_ARGS="--train-minutes 2
# --heldout 2 --subjects 8 --grid 32 --grid-spacing 7 --out /tmp/recipe_tiny".
RECIPE_ARGS ?=

bench-recipe: $(BENCH_STAMP)
	$(PY) benchmarks/bench_recipe.py $(RECIPE_ARGS)

clean:
	rm -rf $(DEMO) .pytest_cache

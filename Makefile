# Two commands for a fresh machine: `make demo` and `make test`.
# Everything installs into ./.venv; the CPU build of torch is pinned and installed first so that
# no CUDA wheels are pulled on machines without a GPU.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nephi-installed
TORCH := torch==2.13.0
DEMO := demo_output

.PHONY: demo test install bench clean

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

# `make bench`: peers benchmark (benchmarks/bench_peers.py -> benchmarks/results/), then the
# GradICON Jacobian benchmark. CHECKPOINT=path adds the feed-forward rows (default: the
# configs/lung_cpu.yaml checkpoint when it exists); BENCH_ARGS=--quick for a short smoke run.
BENCH_STAMP := $(VENV)/.nephi-bench-installed
CHECKPOINT ?= $(wildcard runs/lung_cpu/best.pt)
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench_peers.py $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(BENCH_ARGS)
	$(PY) benchmarks/bench_jacobian.py

clean:
	rm -rf $(DEMO) .pytest_cache

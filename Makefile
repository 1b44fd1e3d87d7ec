# CPU torch first: an unpinned torch would pull a multi-GB CUDA build. On a CUDA machine, install
# your CUDA torch build instead and drop TORCH.
TORCH ?= torch==2.13.0
PYTHON ?= python

.PHONY: install install-dev demo test research-test lint docs benchmark gpu-check

install:
	if [ -n "$(TORCH)" ]; then $(PYTHON) -m pip install -q "$(TORCH)"; fi
	$(PYTHON) -m pip install -q -e .

install-dev:
	if [ -n "$(TORCH)" ]; then $(PYTHON) -m pip install -q "$(TORCH)"; fi
	$(PYTHON) -m pip install -q -e ".[dev]"

# Train a ConvE on bundled Kinships (1-N cross-entropy, checkpoints every 10 epochs), explain 20 test
# triples it ranks in its top 10 (runs/kinships_conve/explain.tsv), report.
demo: install
	$(PYTHON) -m pip install -q -e ".[report]"
	$(PYTHON) scripts/train_kinships.py --output runs/kinships_conve
	tracin-lightning predict --config configs/kinships_conve.yaml
	tracin-lightning report runs/kinships_conve/tracin
	@echo "results: runs/kinships_conve/tracin/ (influence_topk.csv, run.json, config.yaml; open report/index.html)"
	@head -n 6 runs/kinships_conve/tracin/influence_topk.csv

test: install-dev
	$(PYTHON) -m pytest -n 2 --timeout 900

# The research experiments' and benchmark tools' own tests (smoke runs), kept out of the package's
# suite: each study lives in its folder under experiments/, the GPU check under benchmarks/gpu/.
research-test: install-dev
	$(PYTHON) -m pytest -n 2 --timeout 900 -m research experiments benchmarks -p no:cacheprovider

lint: install-dev
	ruff check .
	ruff format --check .
	mypy

# The documentation site (MkDocs, Material theme): regenerate the research pages from experiments/*/results/,
# then build into site/ with warnings as errors. Needs no network: no fonts or plugins are fetched.
docs: install
	$(PYTHON) -m pip install -q -e ".[docs]"
	$(PYTHON) docs/gen_results.py
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

benchmark: install
	$(PYTHON) -m pip install -q -e ".[bench]"
	$(PYTHON) benchmarks/benchmark.py

# One prepared GPU check, at most ~8 minutes on one H100/H200: exactness on the device,
# bf16/fp16 mixed precision, torch.compile, throughput. `--device cpu --smoke` runs it tiny on a CPU.
gpu-check:
	$(PYTHON) benchmarks/gpu/gpu_check.py --output runs/gpu_check.json

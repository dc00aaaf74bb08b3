# rayline: two commands for a new user —  `make demo`  and  `make test`.
# Everything else here is what those two need. torch is installed first and pinned:
# an unpinned resolution would pull a multi-GB CUDA build.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOLS  := .tools/.installed
export RAY_USAGE_STATS_ENABLED := 0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.tools/torch_extensions

.PHONY: demo test venv tools lint bench clean

demo: $(STAMP)
	$(BIN)/rayline demo $(DEMO_ARGS)

test: $(STAMP) $(TOOLS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

tools: $(TOOLS)

$(TOOLS): $(STAMP) tools/install-chart-tools.sh tools/install-prometheus.sh
	bash tools/install-chart-tools.sh
	bash tools/install-prometheus.sh
	mkdir -p .tools && touch $@

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in benchmarks/*_bench.py; do $(BIN)/python $$b || exit 1; done

clean:
	-$(BIN)/rayline down
	rm -rf .rayline .pytest_cache

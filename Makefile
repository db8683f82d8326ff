# Two entry points: `make demo` (the main job) and `make test`. Each creates .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick proto clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned and installed first, so pip never resolves an unpinned torch.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,onnx,data,tensorboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/automtl demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	mkdir -p .benchmarks
	$(BIN)/python -m pytest benchmarks/bench_*.py -s -p no:cacheprovider --benchmark-enable \
		--benchmark-json=.benchmarks/results.json

# The same suite in seconds (small inputs, few rounds): CI keeps the JSON, no time is ever asserted.
bench-quick: $(STAMP)
	mkdir -p .benchmarks
	AUTOMTL_BENCH_QUICK=1 $(BIN)/python -m pytest benchmarks/bench_*.py -q -s -p no:cacheprovider \
		--benchmark-enable --benchmark-min-rounds=1 --benchmark-max-time=0.01 --benchmark-warmup=off \
		--benchmark-json=.benchmarks/ci.json

proto: $(STAMP)
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) build *.egg-info

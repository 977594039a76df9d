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

.PHONY: install deepspeed-ops demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(MAKE) --no-print-directory deepspeed-ops
	touch $@

# DeepSpeed JIT-compiles its CPU shared-memory comm op the first time a training process starts
# (~60 s on 2 cores) into TORCH_EXTENSIONS_DIR; build it at install so no training run waits for it.
deepspeed-ops:
	$(PY) -c "import deepspeed.ops; from deepspeed.accelerator import get_accelerator; \
	b = get_accelerator().create_op_builder('ShareMemCommBuilder'); \
	ok = b is not None and deepspeed.ops.__compatible_ops__.get(b.NAME, False); \
	ok and b.load(verbose=False); print('deepspeed ops:', b.absolute_name() if ok else 'none to build')"

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

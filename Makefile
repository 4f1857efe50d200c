# longdoc: `make serve` sets up and serves the bundled model on :8000; `make test` sets up and runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PORT ?= 8000
# Tools installed into the venv (hadolint, docker compose, ...) must be on PATH for the tests that run them.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup serve test test-tools lint bench train clean

# torch==2.13.0 is the CPU build where pip finds it locally (this project's machines). Elsewhere PyPI's Linux
# wheel is the multi-GB CUDA build: `make serve TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu` installs
# torch from that index first, as the Dockerfile does (2.13.0+cpu then satisfies the pin).
TORCH_INDEX_URL ?=
$(BIN)/longdoc: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(TORCH_INDEX_URL),$(PIP) install -q --index-url '$(TORCH_INDEX_URL)' "$$(grep '^torch==' constraints.txt)")
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/longdoc

serve: setup
	$(BIN)/longdoc serve --port $(PORT)

# System packages and tools the integration tests drive (nginx, prometheus, chromium, linters).
test-tools: setup
	. $(BIN)/activate && bash ci/test-tools.sh

lint: setup
	$(BIN)/ruff check app longdoc tests benchmarks
	$(BIN)/ruff format --check app longdoc tests benchmarks
	$(BIN)/mypy app longdoc

test: test-tools lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/longdoc bench

# Rebuild the bundled default model from the committed data (final fit, cross-validation, seed spread, int8
# scoring; about 10 min on 2 CPU cores, the final fit alone about 1). docs/training.md says how this recipe
# was chosen (section 8: why three layers).
train: setup
	$(BIN)/longdoc train --data data/hyperpartisan/train.jsonl --output model_store/hyperpartisan-minilm \
	  --k-fold 5 --seed-spread 3 --eval-strides 0 64 --eval-int8 --max-length 256 --stride 0 --pooling mean \
	  --encoder-layers 3 --head-init probe --probe-c 0.01 --epochs 0 --seed 0

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

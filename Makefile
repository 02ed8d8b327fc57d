# The README's two commands, `make demo` and `make test`, do all set-up themselves: they create (or refresh) the
# virtualenv in .venv and install the project with its test extras into it. Re-running is cheap: the install step
# re-runs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tiny models on 2 shared cores: one intra-op thread is ~10x faster than two (measured on the test suite).
export OMP_NUM_THREADS ?= 1

.PHONY: venv demo test test-all lint format bench golden clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -c "import modeling_e5omni, e5omni.cli, e5omni.train.trainer, e5omni.model_card, torch, torchvision, transformers, sentence_transformers, peft"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/e5omni demo --output-dir demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark (timings first, then the ~25-minute ablation); writes benchmarks/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

golden: $(STAMP)
	$(BIN)/python tests/make_golden.py

clean:
	rm -rf $(VENV) demo-output

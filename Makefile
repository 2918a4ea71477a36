# Quickstart targets: each sets up what it needs (venv, dependencies, the compiled extension).
#   make bench      - the main job: `erbnn bench` on built-in defaults
#   make test       - the test suite
#   make amx-check  - the AMX-host speed goals of the CPU engines, measured and checked (benchmarks/amx_goals.py)
#   make gpu-check  - on a GPU machine with torch installed (no venv, no network): tools/gpu_check.sh
#   make emu-mutants - the CUDA emulator's mutation check (tools/emu_mutants.py, ~15 min on 2 cores)
# `make test ARGS="-m cuda_emu"` runs only the CUDA kernels on the CPU emulator (erbnn_ext._C_emu,
# built by `make build` unless ERBNN_CUDA_EMU=0).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# Supported: torch 2.11 through 2.14 (e.g. make TORCH=torch==2.11.0 VENV=.venv211).
TORCH   ?= torch==2.14.1
# The build tools, then every extra of pyproject.toml (all: tqdm, matplotlib, scikit-learn; test: pytest, ...).
DEPS    := numpy ninja "setuptools>=77" wheel tqdm matplotlib scikit-learn pytest pytest-benchmark hypothesis
# Where nvcc is, if the CUDA kernels are built: only when a GPU is visible or ERBNN_CUDA=1 (setup.py).
# MAX_JOBS (parallel compiles) defaults to every core.
export CUDA_HOME ?= /usr/local/cuda

.PHONY: bench test build info clean gpu-check emu-mutants amx-check
bench: build
	$(BIN)/erbnn info
	$(BIN)/erbnn bench $(ARGS)

test: build
	$(BIN)/python -m pytest -q $(ARGS)

info: build
	$(BIN)/erbnn info

gpu-check:
	bash tools/gpu_check.sh $(ARGS)

amx-check: build
	$(BIN)/python -m erbnn_ext.benchmarks.amx_goals $(ARGS)

emu-mutants: build
	$(BIN)/python tools/emu_mutants.py $(ARGS)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.deps: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) $(DEPS)
	touch $@

# The editable install only registers the package and the `erbnn` command (no compile: ERBNN_SKIP_EXT);
# it is redone only when the project metadata changes.
$(VENV)/.editable: $(VENV)/.deps pyproject.toml setup.py
	ERBNN_SKIP_EXT=1 $(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

# Compiles csrc/ into erbnn_ext/_C*.so, in place: the CPU kernels (about 3 minutes on 2 cores from
# nothing), and the CUDA kernels only when a GPU is visible or ERBNN_CUDA=1 (as many minutes again); and
# the CUDA emulator (csrc/cuda as C++ against csrc/cuda_emu) into erbnn_ext/_C_emu*.so, for the tests.
# Always run: ninja recompiles only the sources whose files or headers changed (objects kept in build/),
# then relinks; its last line says what was compiled and what was skipped.
build: $(VENV)/.editable
	$(BIN)/python setup.py -q build_ext --inplace --force

clean:
	rm -rf build erbnn_ext/_C*.so erbnn_ext/_build_info.py *.egg-info $(VENV)/.editable

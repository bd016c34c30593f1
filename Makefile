# recsys: the two commands of the README's Quick start, and a few helpers.
#   make run    venv + install, demo log (unless LOG=...), train, export, serve on localhost:50051
#   make test   venv + test dependencies + redis-server if missing, then the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
ARTIFACTS ?= artifacts
PORT ?= 50051
LOG ?=
ITEMS ?=
USERS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-dev redis-server lint proto clean gpu-check

include make/proto.mk

# torch==2.13.0 is pinned in pyproject.toml; on this project's machines pip takes the CPU build from
# local disk. Elsewhere, install torch first from https://download.pytorch.org/whl/cpu.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get (Debian/Ubuntu)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; } || { \
	  echo "error: the tests need redis-server on PATH; install it (apt-get install -y redis-server, brew install redis)"; exit 1; }

run: $(VENV)/.installed
ifeq ($(LOG),)
	$(PY) -m training synth --out $(DEMO) --users 600 --items 300 --seed 0
	$(PY) -m training fit --log $(DEMO)/clicks.parquet --items $(DEMO)/items.parquet --users $(DEMO)/users.parquet \
	  --out $(ARTIFACTS) --set train.epochs=3
else
	$(PY) -m training fit --log $(LOG) $(if $(ITEMS),--items $(ITEMS)) $(if $(USERS),--users $(USERS)) --out $(ARTIFACTS)
endif
	@echo
	@echo "Serving on localhost:$(PORT). In another terminal, try:"
	@echo "  $(PY) -m serving.client --target localhost:$(PORT) recommend --user u00001 --k 10"
	@echo
	$(PY) -m serving --artifact $(ARTIFACTS) --features memory:// --port $(PORT)

test: $(VENV)/.installed-dev redis-server
	$(PY) -m pytest -q

# on a machine with a GPU and a CUDA build of torch: training on the GPU, and torchrun over NCCL
gpu-check: $(VENV)/.installed-dev
	$(PY) -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU: install a CUDA build of torch'"
	$(PY) -m pytest -q tests/test_gpu.py tests/test_distributed.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check recsys training serving bench tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

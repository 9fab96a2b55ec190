# hbc-testbed: `make demo` and `make test` set up everything they need first.
#   make deps   system packages (mosquitto, Fashion-MNIST, socat, iproute2, nftables, OpenSSH, sudo) via apt-get when root
#   make venv   .venv with the CPU build of torch and this package in editable mode
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; install it before anything that depends on torch, or pip may pick a
# multi-GB CUDA build. Override on another machine, e.g. TORCH_SPEC='torch>=2.2'.
TORCH_SPEC ?= torch==2.13.0
APT_PACKAGES := mosquitto dataset-fashion-mnist socat iproute2 nftables openssh-server openssh-client sudo
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?= --durations=20   # the slowest tests, so CI shows where the wall time goes

.PHONY: all demo test deps venv clean

all: test

deps:
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "deps: system packages present ($(APT_PACKAGES))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "deps: installing $(APT_PACKAGES) with apt-get"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else \
		echo "deps: missing system packages; run:  sudo apt-get install $(APT_PACKAGES)"; \
		echo "      (without mosquitto the demo falls back to the embedded amqtt broker and says so)"; \
	fi

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: deps venv
	$(BIN)/testbed demo $(ARGS)

test: deps venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info

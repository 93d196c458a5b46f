# Two commands a newcomer needs: `make demo` and `make test`.
# Both create or refresh .venv, build the Rust extension in release mode, install the package with
# its dependencies, then run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint cargo-test pytest bench clean wheel

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "maturin>=1.5,<2"

# Rebuilds whenever Rust sources, the crate manifest or the package metadata change.
$(STAMP): $(BIN)/python pyproject.toml Cargo.toml $(wildcard src/*.rs)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(BIN)):$$PATH $(BIN)/maturin develop --release --extras test -q
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/bifrost-rt demo

# The house rules, checked: import layering (import-linter), pyflakes + bugbear + import order (ruff), types in the
# core and policy layers (mypy), and clippy on the Rust core and its bindings.
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check python tests benches
	$(BIN)/mypy python/bifrost_rt/core python/bifrost_rt/dialects python/bifrost_rt/policy
	cargo clippy --release -q --all-targets -- -D warnings
	cargo clippy --release -q --all-targets --features python -- -D warnings

cargo-test:
	cargo test --release -q

pytest: install
	$(BIN)/python -m pytest -q -ra

test: install lint cargo-test pytest

bench: install
	$(BIN)/python -m pytest benches -q --benchmark-only
	$(BIN)/python benches/pre_turn.py
	$(BIN)/bifrost-rt bench
	$(BIN)/bifrost-rt bench --webrtc

wheel: $(BIN)/python
	$(BIN)/maturin build --release -o dist

clean:
	rm -rf $(VENV) target dist

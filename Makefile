# Two entry points (README "Quick start"): `make demo` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast chaos-matrix bench lint typecheck clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "raftmq needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# Install, start a local cluster (NODES brokers, default 3; partitions keep replication factor 3), run a short
# acks=all produce/consume demo (with a leader kill). E.g. `make demo NODES=5`.
NODES ?= 3
demo: $(VENV)/.installed
	$(BIN)/raftmq demo --nodes $(NODES)

# Install, lint, type-check and run every test (unit, in-process and real-process cluster tests, the short
# chaos suite). The import rules between rooms are tests too (tests/unit/test_import_rules.py).
test: lint typecheck
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q tests/unit

# The full chaos matrix: every scenario x acks 0,1,all (48 runs of 30 s plus set-up and checks: about 35 minutes, estimated from the 16-run acks=all matrices).
chaos-matrix: $(VENV)/.installed
	$(BIN)/raftmq chaos run all --acks 0,1,all --seed 1 --duration 30s --report-dir reports/chaos

bench: $(VENV)/.installed
	$(BIN)/raftmq bench produce --records 1000000 --record-bytes 100 --acks all,1,0 --report reports/bench.json

lint: $(VENV)/.installed-test
	$(BIN)/ruff check raftmq cluster node client chaos deploy tests

# mypy sees the installed layout (raftmq.cluster is ./cluster, ...) through a tree of symlinks in the venv.
TYPECHECK_TREE := $(VENV)/typecheck
typecheck: $(VENV)/.installed-test
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/raftmq
	ln -s $(CURDIR)/raftmq/__init__.py $(CURDIR)/raftmq/cli $(TYPECHECK_TREE)/raftmq/
	for room in cluster node client chaos deploy; do ln -s $(CURDIR)/$$room $(TYPECHECK_TREE)/raftmq/$$room; done
	cd $(TYPECHECK_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/$(VENV)/mypy-cache -p raftmq

clean:
	rm -rf $(VENV) .pytest_cache reports

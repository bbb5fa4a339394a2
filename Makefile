# Everything runs inside .venv, created on first use from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SEEDS ?= 100000

.PHONY: install test test-deps lint run proto sim bench chaos soak clean

# Debian's fuse3 (fusermount3, libfuse3) for the chaos harness's power-loss disks; installed
# with apt-get when missing and possible (root), else the tests that need it are skipped.
FUSERMOUNT := /usr/bin/fusermount3
$(FUSERMOUNT):
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev; \
	else \
		echo "fuse3 is missing: power-loss tests will be skipped (apt-get install fuse3 libfuse3-dev)"; \
	fi

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

## make test: lint, type-check and the default test suite (real etcd and chromium included),
## in TEST_JOBS processes (pytest-xdist; a file's tests stay together, in order, in one).
TEST_JOBS ?= 2
test: lint test-deps
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

## make test-deps: Debian packages the tests use: etcd 3.4 (etcd-client, etcd-server), whose
## tools and backups our etcd-format backups are checked against, fuse3 (power-loss disks) and
## chromium, the browser of the dashboard's tests (never a browser of Playwright's own).
test-deps: | $(FUSERMOUNT)
	@test -x /usr/bin/etcdctl -a -x /usr/bin/etcd || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		etcd-client etcd-server; }
	@test -x /usr/bin/chromium || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## make run: the controllers demo on our 3-member store (ports 2379/12379/22379, data in
## ./kvstore-data): controller-managers, schedulers, node agents and a Deployment, with a live
## view, keys to kill leaders and the web dashboard (its URL is printed; Ctrl-C stops it).
## RUN_ARGS=--free-ports if the ports are
## taken; `.venv/bin/kvstore cluster up -n 3` runs just the store.
RUN_ARGS ?=
run: $(INSTALLED)
	$(BIN)/controllers-demo $(RUN_ARGS)

## make proto: regenerate kvstore/_pb from proto/ (a test fails when it is stale).
proto: $(INSTALLED)
	$(BIN)/python -m kvstore._pb.generate

## make sim SEEDS=100000: a long deterministic Raft simulation campaign (both cores).
sim: $(INSTALLED)
	$(BIN)/python -m tests.sim.campaign --seeds $(SEEDS) --jobs 2

## make bench: in-process micro-benchmarks of the Raft core, the WAL and MVCC.
bench: $(INSTALLED)
	$(BIN)/python -m kvstore.raft.bench
	$(BIN)/python -m kvstore.storage.bench
	$(BIN)/python -m kvstore.mvcc.bench

## make chaos ROUNDS=200 TARGET=etcd|ours SEED=1: a fault campaign against 3 members of a real
## etcd or of our store (lease reads judged strictly there), with every fault: process, network,
## membership, power loss and disk faults, and (ours) failpoint crashes; see chaos/README.md.
ROUNDS ?= 200
TARGET ?= etcd
SEED ?= 1
CHAOS_TARGET = $(if $(filter ours kvstore,$(TARGET)),kvstore --strict-leases --failpoints,$(TARGET))
chaos: $(INSTALLED) | $(FUSERMOUNT)
	$(BIN)/python -m chaos --seed $(SEED) --rounds $(ROUNDS) --members 3 --round-seconds 1.5 --network --power --target $(CHAOS_TARGET) --out run/chaos

## make soak: the long-running tests left out of the default run.
soak: $(INSTALLED)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

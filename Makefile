# rftloop — the two commands: `make demo` and `make test`.
# Both create or reuse the Python environment (cached outside the clone, keyed
# by the lock files' hash; `.venv` links to it) and fetch the Kafka / Apicurio
# jars with Maven into the same cache on first use.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: browser venv test test-all test-unit test-integration reliability lint demo up down status bench lock clean

venv:
	@bash infra/scripts/ensure_venv.sh

# Everything but the `slow` tests (fault variants, the two-replica gateway, the trainer daemon on
# its own engine, the three-broker kill, the sink kill, DPO training, the two rebalance tests; they run in `make test-all`, the fault ones in `make reliability` too),
# to keep `make test` inside CI's 25 minutes on 2 cores.
test: venv browser
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: venv browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

test-integration: venv
	$(PY) -m pytest -q -m "integration or e2e" $(PYTEST_ARGS)

# The fault and bad-input scenarios (part of `make test`, the `slow` variants only here and in
# `make test-all`), with their figures written to RELIABILITY.md's table.
reliability: venv
	rm -f .rftloop/reliability.jsonl && mkdir -p .rftloop
	RFTLOOP_RELIABILITY_OUT=$(CURDIR)/.rftloop/reliability.jsonl $(PY) -m pytest -q -m reliability $(PYTEST_ARGS)
	$(PY) -m tests.reliability_report .rftloop/reliability.jsonl RELIABILITY.md

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy schemas infra producers streams consumers cli bench

demo: venv
	$(PY) -m cli.main demo $(DEMO_ARGS)

up: venv
	$(PY) -m cli.main up

down: venv
	$(PY) -m cli.main down

status: venv
	$(PY) -m cli.main status

bench: venv
	$(PY) -m cli.main bench $(BENCH)

# Recompile the lock after editing infra/deps/main.in.
lock:
	bash -c 'cd infra/deps && $${RFTLOOP_CACHE:-$$HOME/.cache/rftloop}/uv-0.13.8/bin/uv pip compile main.in -c verified-constraints.txt --override overrides.txt --python-version 3.11 -o lock.txt'

clean:
	-$(PY) -m cli.main down
	rm -rf .rftloop

# Debian's chromium, for the dashboard's browser test (apt, as root or with passwordless sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (dashboard test) ..."; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

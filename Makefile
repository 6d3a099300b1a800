# The habits everyone uses. A fresh clone needs only Python 3.11 and pip:
#   make run    start the embedded stack and run an example plan to completion
#   make test   the whole test suite (what CI runs)
PY ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Installed packages come with their bytecode: a CLI command then starts in a fraction of
# the time (`plansmith validate` 0.6 s -> 0.2 s here), also where PYTHONDONTWRITEBYTECODE is set.
export UV_COMPILE_BYTECODE := 1

.PHONY: install test-install sandbox-deps browser-deps run up test test-fast test-unit lint format bench chaos clean

$(UV):
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv>=0.13,<0.14"

# The main job's environment: the project and what it needs to run, no test tools.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --no-dev --python $(PY)
	rm -f $(VENV)/.installed-dev
	touch $@

# The tests' environment: the same plus the dev group (pytest, linters, Playwright...).
$(VENV)/.installed-dev: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --python $(PY)
	touch $(VENV)/.installed $@

# `make up` keeps a stack up for any plan, so it brings the sandbox too; `make run`'s demo
# plans use no generated code and need nothing but the Python environment.
install: $(VENV)/.installed sandbox-deps

# What the tests need besides: the sandbox (bubblewrap) and a browser (Chromium).
test-install: $(VENV)/.installed-dev sandbox-deps browser-deps

# The code sandbox runs generated code under bubblewrap with a seccomp filter built by
# libseccomp (Debian's packages bubblewrap and libseccomp2; the Python binding, pyseccomp,
# is a project dependency); without them python steps are refused with a clear message.
sandbox-deps:
	@{ command -v bwrap >/dev/null 2>&1 && { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q 'libseccomp\.so\.2'; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2; \
	  else echo "warning: bubblewrap (bwrap) or libseccomp2 is missing: python steps will be refused" >&2; fi; }

# The dashboard's tests drive Debian's Chromium (/usr/bin/chromium) headless with
# Playwright; no browser is downloaded. Without it tests/api/test_dashboard.py fails.
browser-deps:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "warning: chromium is missing (/usr/bin/chromium): the dashboard tests will fail; as root: apt-get install chromium" >&2; fi; }

run: $(VENV)/.installed
	$(BIN)/plansmith demo --exit-with-parent

up: install
	$(BIN)/plansmith up --exit-with-parent

test: test-install
	$(BIN)/pytest -q

test-fast: test-install
	$(BIN)/pytest -q -m "not slow" -x

# Only the pure-code tests (tests/plans, tests/test_architecture.py): no server, no database.
test-unit: test-install
	$(BIN)/pytest -q -m unit

lint: test-install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy config contracts plans api store activities workflows plansmith worker.py

format: test-install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark, one after the other (~15 minutes; docs/benchmarks.md has a recorded run).
bench: test-install
	$(BIN)/python -m bench.run --big-docs
	$(BIN)/python -m bench.fastpath
	$(BIN)/python -m bench.concurrency
	$(BIN)/python -m bench.chain_status --steps 100,2000,10000
	$(BIN)/python -m bench.watchers --steps 2000
	$(BIN)/python -m bench.waiting --plans 1000

# The chaos suite's long profile (docs/chaos.md): 100 plans through worker SIGKILLs, a dev
# server restart, a 30 s store outage, a control storm and hostile documents. Needs
# PostgreSQL on 127.0.0.1:5432 (PLANSMITH_TEST_POSTGRES_URL). Exit 1 unless every figure is 0.
chaos: test-install
	$(BIN)/python -m chaos.run --profile long

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache .mypy_cache .hypothesis

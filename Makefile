# streamrec: `make demo` runs the main job, `make test` runs the whole suite; both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools demo test lint format bench clean infra-down

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian tools the suite runs (command:package, `-` for a package without one; redis-server
# with TLS: the secured-Redis and Redis Cluster fixtures start their own); the tests
# fail without them, never skip.
DEBIAN_TOOLS := systemd-analyze:systemd kcat:kcat -:python3-seccomp redis-server:redis-server \
	chromium:chromium chromedriver:chromium-driver

tools:
	@missing=""; for t in $(DEBIAN_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || dpkg -s $${t#*:} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# promtool (Debian's `prometheus` package) checks infra/monitoring/ in the suite; its `prometheus`
# runs in the `infra up --monitoring` test.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	}

demo: install
	$(BIN)/streamrec demo

# The suite's tests are independent sessions' worth of services (each worker its own broker and
# Redis DB); those that assert wall-clock bounds (`serial`) run alone after the rest.
TEST_WORKERS ?= 2

test: install tools promtool
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m 'not serial'
	$(BIN)/pytest -m serial

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/replay.py

infra-down: install
	$(BIN)/streamrec infra down

clean:
	rm -rf $(VENV) .pytest_cache

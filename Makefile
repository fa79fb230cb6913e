# Rack: install, run and test plumbing.
#
#   make run      install, make sure a Docker Engine answers, start the rack in the foreground
#   make test     install, Docker Engine, test tools, lint, then the whole test suite
#
# See `make help` for the other targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

# `make run HOST=0.0.0.0 PORT=5443 DATA_DIR=/srv/rack`: each is passed on only when set.
RUN_ARGS := $(if $(HOST),--host '$(HOST)') $(if $(PORT),--port '$(PORT)') $(if $(DATA_DIR),--data-dir '$(DATA_DIR)')
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: help install install-dev docker test-tools images lint test run bench bench-ceiling bench-logs-ceiling bench-logs-pipeline clean distclean

help:
	@echo "make run         install, start a Docker Engine if needed, run the rack (HOST= PORT= DATA_DIR=)"
	@echo "make test        install, Docker Engine, test tools, images; lint and the tiers of tests side by side (PYTEST_ARGS=)"
	@echo "make install     create .venv and install what the rack and the CLI need (.venv/bin/convox)"
	@echo "make install-dev also the test, lint and build tools (the dev extra; make test and lint do this)"
	@echo "make docker      make sure a Docker Engine answers (installs/starts dockerd as root on Debian)"
	@echo "make test-tools  install what the tests need beyond Python (chromium, busybox-static, tmux)"
	@echo "make images      build the offline service and app base images from Debian packages (cached)"
	@echo "make lint        ruff check + mypy (strict) on the product, its tests and benchmarks"
	@echo "make bench       run the benchmarks (python -m bench, BENCH_ARGS=)"
	@echo "make bench-ceiling  exec throughput of one ideal relaying process vs docker exec (a probe)"
	@echo "make bench-logs-ceiling  lines/s of the ideal Python log follower vs docker logs -f (a probe; BENCH_ARGS=--latency: its latency)"
	@echo "make bench-logs-pipeline  the local log collector's own CPU per line, engine simulated (a probe)"
	@echo "make clean       remove caches; make distclean also removes .venv"

# ---- install -----------------------------------------------------------------------------------
# A stamp is newer than pyproject.toml once its install succeeded: a second `make install` is a no-op.
# `make run` installs only what the rack needs; the dev extra (pytest, mypy, ruff, playwright, moto...) is
# installed by `make install-dev`, which `make test` and `make lint` use.
define make_venv
	@if [ ! -x $(BIN)/python ]; then \
	  echo "creating $(VENV) with $$(command -v $(PYTHON))"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "ERROR: '$(PYTHON) -m venv' failed; Python >= 3.11 with venv is needed (Debian: apt-get install python3-venv)" >&2; \
	    exit 1; }; \
	  $(BIN)/python -m pip install --quiet --upgrade pip; \
	fi
endef

$(STAMP): pyproject.toml
	$(make_venv)
	$(BIN)/python -m pip install -e .
	@test -x $(BIN)/convox || { echo "ERROR: $(BIN)/convox was not installed" >&2; exit 1; }
	@touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

# Bytecode for every module, made at install as pip makes it for an installed package (an editable install
# writes it on first import only, and never under PYTHONDONTWRITEBYTECODE): each `convox` command and each of
# the rack's services would compile its modules again at every start otherwise (a `convox deploy`'s imports
# took 105 ms without it, 78 ms with it). Incremental: only what changed since is compiled again.
define compile_bytecode
	@$(BIN)/python -m compileall -q -j 0 cli services shared
endef

install: $(STAMP)
	$(compile_bytecode)

install-dev: $(DEV_STAMP)
	$(compile_bytecode)

# ---- system prerequisites ----------------------------------------------------------------------
docker:
	@bash scripts/ensure-docker.sh

test-tools:
	@bash scripts/ensure-test-tools.sh

# ---- checks ------------------------------------------------------------------------------------
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy bench cli services shared tests

# scripts/test.sh runs lint and the tests that need no engine side by side with the engine's tier (which
# starts once the engine, the test tools and the offline images are ready); pytest's "no tests collected"
# fails like any other non-zero code. PYTEST_ARGS= makes it one targeted pytest run after lint.
test: install-dev
	@PYTEST_ARGS='$(PYTEST_ARGS)' bash scripts/test.sh

# ---- run ---------------------------------------------------------------------------------------
run: install docker
	exec $(BIN)/convox rack start $(RUN_ARGS)

bench: install-dev docker
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-ceiling: install-dev docker
	$(BIN)/python -m bench.ceiling

bench-logs-ceiling: install-dev docker
	$(BIN)/python -m bench.logs_ceiling $(BENCH_ARGS)

bench-logs-pipeline: install-dev
	$(BIN)/python -m bench.logs_pipeline

# ---- images ------------------------------------------------------------------------------------
# The offline images (images/README.md): a debootstrapped Debian base, postgres, mysql (MariaDB), redis and
# memcached honouring the official images' environment, an app base image with their clients, and the python3
# and node language bases (`convox init --base offline`). Cached: an image whose label matches what it is built
# from is not rebuilt, so a warm `make images` takes a fraction of a second.
images: docker
	@bash images/build.sh

# ---- housekeeping ------------------------------------------------------------------------------
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache dist build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

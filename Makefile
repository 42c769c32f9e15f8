# The two commands of the README:  `make run`  (the experiment)  and  `make test`.
# Both create .venv and install everything on first use; later calls reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and on its own: pinned here so pip never picks a multi-GB build by
# accident (on this project's CI machines 2.13.0 is a local CPU wheel). Override with
# `make TORCH_SPEC=torch==2.5.1 ...` to match your CUDA.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
# Test processes: most of the suite's time is subprocesses starting and servers answering, so two
# processes on two cores finish it in about two thirds of the time of one. Each takes whole test
# files (--dist loadfile), so a file's module fixtures are built once. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: run test test-fast ui setup browser interop clean-venv docs docs-options

# SAELens, for the interop test that loads laminar's saved SAEs with it. Its own environment:
# sae-lens 6 needs transformer-lens < 4, laminar needs 4. Built once, reused (`make clean-venv`).
INTEROP := .venv-interop
SAE_LENS_SPEC ?= sae-lens>=6,<7

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

$(INTEROP)/.installed: Makefile
	$(PYTHON) -m venv $(INTEROP)
	$(INTEROP)/bin/python -m pip install -q --upgrade pip
	$(INTEROP)/bin/python -m pip install -q $(TORCH_SPEC)
	$(INTEROP)/bin/python -m pip install -q "$(SAE_LENS_SPEC)"
	touch $@

interop: $(INTEROP)/.installed

run: setup
	$(VENV)/bin/laminar $(ARGS)

# The browser test drives Debian's chromium (no browser download). Installed here when missing
# and we are root with apt-get (CI); elsewhere the test skips with a message.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed: the browser test will skip"

# The three set-ups are independent (two venvs, one apt install): built at once, they take about
# two thirds of the time of one after the other.
test:
	$(MAKE) --no-print-directory -j3 setup browser interop
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q --durations=25 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

# The loop while editing: every test that needs no real Prefect server, browser, Dask cluster,
# second environment or fault injection (docs/development.md gives its time); no set-up of
# chromium or .venv-interop.
test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) \
	  -m "not ui and not interop and not cluster and not faults and not slow" $(ARGS)

ui: setup
	$(VENV)/bin/laminar-ui

# The docs site (mkdocs-material): the options page is made from the config model first.
docs-options: setup
	$(PY) -m tasks.cli docs/options.md
	$(PY) -m tasks.columns docs/measures.md

docs: docs-options
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

clean-venv:
	rm -rf $(VENV) $(INTEROP)

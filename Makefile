# `make demo` and `make test` set up .venv from nothing (torch pinned by constraints.txt).
# One venv, two install levels: `make demo` installs only what the demo needs (the sweep and its
# report: no Triton, no test tools); `make test` upgrades the same venv to the dev set. Running
# `make demo` after `make test` installs nothing more.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
# Extra pytest arguments, e.g. `make test PYTEST_ARGS='-x tests/test_targets.py'`.
PYTEST_ARGS ?=

.PHONY: venv venv-demo venv-test test test-fast demo bench clean

venv: venv-test
venv-demo: $(DEMO_STAMP)
venv-test: $(TEST_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip

$(DEMO_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) -e ".[demo]"
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps "netcal>=1.3"
	touch $(TEST_STAMP) $(DEMO_STAMP)

# The whole suite (what CI runs).
test: $(TEST_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite without the tests marked slow (multi-process, compile-heavy, training runs).
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(DEMO_STAMP)
	$(PY) -m labelsmooth sweep --out sweep-out
	@echo "Report: $(CURDIR)/sweep-out/report.html (and sweep-out/report.md)"

bench: $(TEST_STAMP)
	$(PY) benchmarks/bench_cross_entropy.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

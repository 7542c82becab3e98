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

.PHONY: venv venv-demo venv-test fashion-data test test-fast demo bench clean

venv: venv-test
venv-demo: $(DEMO_STAMP) fashion-data
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

# Fashion-MNIST's IDX files (Debian package dataset-fashion-mnist, 31 MB, no network at load) for
# `--dataset fashion-mnist` and its tests. Installed where apt-get exists and we are root (CI);
# otherwise skipped with a message: the tests on the real files then skip. Never fails the build.
FASHION_DIR := /usr/share/datasets/fashion-mnist
FASHION_PKG := dataset-fashion-mnist
fashion-data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing $(FASHION_PKG) (Fashion-MNIST) with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(FASHION_PKG) >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(FASHION_PKG) >/dev/null 2>&1; } \
	  || echo "note: apt-get could not install $(FASHION_PKG); Fashion-MNIST tests will be skipped"; \
	else \
	  echo "note: $(FASHION_PKG) not installed (needs apt-get as root); Fashion-MNIST tests will be skipped and --dataset fashion-mnist needs --data-dir"; \
	fi

# The whole suite (what CI runs).
test: $(TEST_STAMP) fashion-data
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite without the tests marked slow (multi-process, compile-heavy, training runs).
test-fast: $(TEST_STAMP) fashion-data
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(DEMO_STAMP) fashion-data
	$(PY) -m labelsmooth sweep --out sweep-out
	@echo "Report: $(CURDIR)/sweep-out/report.html (and sweep-out/report.md)"

bench: $(TEST_STAMP)
	$(PY) benchmarks/bench_cross_entropy.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# `make test` and `make demo` set up .venv from nothing (torch pinned by constraints.txt).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet -c constraints.txt --no-deps "netcal>=1.3"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m labelsmooth sweep --out sweep-out
	@echo "Report: $(CURDIR)/sweep-out/report.html (and sweep-out/report.md)"

bench: $(STAMP)
	$(PY) benchmarks/bench_cross_entropy.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# featlab: `make setup` then `make test` on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python

.PHONY: setup test bench bench-quality lint clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
	$(VENV)/bin/featlab --version

test:
	$(PY) -m pytest -q

bench:
	$(PY) tests/benchmarks/run_all.py

# Results on real faces (../shared/faces): writes docs/results.md. Long (about 30 min on 2 cores): run it alone.
bench-quality:
	$(PY) tests/benchmarks/bench_quality.py

lint:
	$(VENV)/bin/ruff check featlab data_prep tests

clean:
	rm -rf $(VENV) featlab-work bench-out .pytest_cache

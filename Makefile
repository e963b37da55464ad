# Two commands set everything up on a machine with only Python 3.11:
#   make demo   runs the main job on generated sample DICOM
#   make test   runs lint, type checks and the whole test suite
# Both create .venv and install from constraints.txt (the locked dependency set) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest demo bench bench-orchestration lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py airflow_pseudo/pseudonymisation/_scanner.c
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11) and "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[test,celery,openlineage]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: venv
	$(BIN)/python -m airflow_pseudo.demo

bench: venv
	$(BIN)/python -m benchmarks.run

bench-orchestration: venv
	$(BIN)/python -m benchmarks.orchestration

# Re-resolve the dependency set from scratch and record it in constraints.txt.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip>=24"
	.lock-venv/bin/python -m pip install --quiet '.[test,celery,openlineage]'
	.lock-venv/bin/python -m pip freeze --exclude airflow-pseudo --exclude pip > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist

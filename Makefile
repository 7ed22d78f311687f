# Two commands on a fresh clone: `make run` and `make test`. Each creates .venv
# when it is missing and (re)installs the project when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/simdl run scenarios/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/flows.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/planner.py
	$(BIN)/python bench/sweep.py

clean:
	rm -rf $(VENV) build *.egg-info

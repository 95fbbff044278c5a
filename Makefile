# The two commands a newcomer types: `make demo` and `make test`.
# Each creates .venv and installs satsweep into it when missing (a stamp file keeps this fast).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.satsweep-installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "satsweep: installing into $(VENV) (first run, or pyproject.toml changed)"
	@$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/satsweep run sweeps/quickstart.yaml

# Two test processes: most of the suite waits on Ray, servers and subprocesses rather than the
# CPU (one process kept 2 cores 36 % busy). A file's tests stay in one process, so a module's
# fixture (a whole sweep, say) runs once.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf ray_results mlflow.db mlruns mlartifacts .pytest_cache

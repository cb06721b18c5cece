# The README's two commands are `make run` and `make test`; everything else is for developers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The demo keeps its state in the checkout unless TUNDRA_HOME says otherwise.
export TUNDRA_HOME ?= $(CURDIR)/tundra-home

.PHONY: run tour test pytest lint format typecheck completions docs bench clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# "compat" editable mode puts the checkout on sys.path with a .pth file instead of an import hook,
# which costs every `tundra` invocation about 15 ms of start-up (see bench/cli_startup.py).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $@

## Set up, then run Tundra's main job on the embedded default (SQLite + embedded KV): initialise
## $(TUNDRA_HOME) if needed and serve the panel and API until Ctrl-C.
run: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" ./scripts/run.sh

## A short command-line tour on the same home: servers, tokens, keys, audit.
tour: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" ./scripts/tour.sh

## Set up, then run every check: ruff, mypy, the layering contract and the test suite.
test: $(VENV)/.installed lint typecheck pytest

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check tundra
	$(BIN)/lint-imports

format: $(VENV)/.installed
	$(BIN)/ruff format tundra
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

completions: $(VENV)/.installed
	for shell in bash zsh fish; do $(BIN)/tundra completions $$shell > completions/tundra.$$shell; done

docs: $(VENV)/.installed
	$(BIN)/python scripts/settings_doc.py

bench: $(VENV)/.installed
	for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script; done

clean-demo:
	rm -rf "$(TUNDRA_HOME)"

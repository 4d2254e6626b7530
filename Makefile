# Two commands do all the set-up: `make serve` and `make test` (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: install serve test lint typecheck browser browser-test docker-test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[train,serve,dev]"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m service

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check contract trainer service tests bench scripts docker
	$(BIN)/mypy contract trainer service bench scripts

browser:
	bash scripts/install-browser.sh

browser-test: $(STAMP) browser
	$(BIN)/python -m pytest -q -m browser

docker-test: $(STAMP)
	bash scripts/docker-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

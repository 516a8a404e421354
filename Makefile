# Self-installing targets: each creates .venv (python3.11) when missing and installs the
# package with the pinned versions in constraints.txt, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint bench clean

# torchattacks declares requests~=2.25.1, which conflicts with the pinned requests; it imports
# only torch, numpy and scipy (all pinned), so a second step installs it without its declared
# dependencies, at the version constraints.txt pins.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt torchattacks
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/robust demo --out runs/demo --report reports/demo.pdf

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# pytest exits 5 when no test carries the slow mark; that is not a failure.
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow $(PYTEST_ARGS); \
	status=$$?; if [ $$status -eq 5 ]; then exit 0; else exit $$status; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

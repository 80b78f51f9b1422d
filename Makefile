# The README's commands. Each target sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.amecam-installed
# the CPU build of torch; an unpinned torch may pull a multi-GB CUDA build
TORCH_PIN := torch==2.13.0
# the tested version of every dependency (see the file's header)
CONSTRAINTS := constraints.txt
DEMO_DIR ?= demo_output

.PHONY: install test demo clean

$(STAMP): setup.cfg setup.py pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/amecam demo --output_dir $(DEMO_DIR)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

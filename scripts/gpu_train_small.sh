#!/usr/bin/env bash
# Train cat-small on a lent GPU machine: no network, no ../shared, 64 MiB of working tree, and no diffusers or
# jsonargparse there (docs/training.md, "On a lent GPU machine"). Two steps, the first here, the second there:
#
#   scripts/gpu_train_small.sh kit     here (make gpu-kit): .gpu/data.tar = real-v1 train/dev packed into 36 MiB
#                                      (cat-tokenizer pack) + .gpu/whl/ (the wheels the machine lacks)
#   scripts/gpu_train_small.sh train   there (make gpu-train-small, run with carry [".gpu"]): installs the wheels and
#                                      the project into $GPU_SITE, trains configs/vae_small.yaml from scratch in bf16,
#                                      exports the fp16 EMA weights, curve and log to $OUT
#
# Knobs (environment): GPU_BATCHES (cosine length in batches), GPU_TIME (max_time), GPU_BATCH, GPU_LR, GPU_WARMUP,
# GPU_WORKERS, GPU_EVAL_EVERY, GPU_ACCEL, GPU_PY, GPU_ARGS (more `lightning fit` flags), REAL_DATA, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

KIT=${GPU_KIT:-.gpu}
REAL_DATA=${REAL_DATA:-../shared/data/real-v1}
BATCHES=${GPU_BATCHES:-16000}
PY=${GPU_PY:-python3}
SITE=${GPU_SITE:-/tmp/site}
DATA=${GPU_DATA:-/tmp/gpu_data}
RUN=${GPU_RUN:-outputs/gpu}
OUT_DIR=${OUT:-outputs/gpu_out}
WHEELS="diffusers==0.42.1 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0"

kit() {
  test -d "$REAL_DATA/train" || { echo "gpu kit: no $REAL_DATA/train; set REAL_DATA"; exit 2; }
  rm -rf "$KIT" && mkdir -p "$KIT"
  .venv/bin/cat-tokenizer pack "$REAL_DATA/train" "$KIT/data/train" --max-mib 32 --side 192
  .venv/bin/cat-tokenizer pack "$REAL_DATA/dev" "$KIT/data/dev" --max-mib 4 --side 192
  tar -cf "$KIT/data.tar" -C "$KIT" data && rm -rf "$KIT/data"   # one file: no per-file block slack
  # shellcheck disable=SC2086
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$KIT/whl" $WHEELS
  du -sh "$KIT"
}

train() {
  test -f "$KIT/data.tar" || { echo "gpu train: no $KIT/data.tar; run 'make gpu-kit' first and carry $KIT"; exit 2; }
  rm -rf "$DATA" && mkdir -p "$DATA" && tar -xf "$KIT/data.tar" -C "$DATA" --strip-components 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$KIT"/whl/*.whl
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$SITE" .
  rm -rf "$RUN" && mkdir -p "$OUT_DIR"
  local rc=0
  # shellcheck disable=SC2086
  PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 "$PY" -m cat_tokenizer.cli.lightning_main fit -c configs/vae_small.yaml \
    --data.root "$DATA/train" --data.batch_size "${GPU_BATCH:-64}" --data.num_workers "${GPU_WORKERS:-12}" \
    --model.init_args.lr "${GPU_LR:-2.0e-3}" --model.init_args.warmup_steps "${GPU_WARMUP:-500}" \
    --model.init_args.decay_steps "$BATCHES" --trainer.max_steps $((2 * BATCHES)) \
    --trainer.max_time "${GPU_TIME:-00:00:08:00}" --trainer.accelerator "${GPU_ACCEL:-gpu}" --trainer.devices 1 \
    --trainer.enable_progress_bar false --trainer.default_root_dir "$RUN" \
    --trainer.logger.class_path lightning.pytorch.loggers.CSVLogger --trainer.logger.init_args.save_dir "$RUN" \
    --trainer.logger.init_args.name run --trainer.logger.init_args.version 0 \
    --trainer.callbacks+=cat_tokenizer.lit.kind_eval.KindEvaluator --trainer.callbacks.root "$DATA/dev" \
    --trainer.callbacks.every_n_batches "${GPU_EVAL_EVERY:-2000}" ${GPU_ARGS:-} > "$OUT_DIR/train.log" 2>&1 || rc=$?
  tail -n 30 "$OUT_DIR/train.log"
  [ "$rc" = 0 ] || exit "$rc"
  PYTHONPATH="$SITE" "$PY" -m cat_tokenizer.cli.tools export --ckpt "$RUN/run/version_0/pretrained" \
    --out "$OUT_DIR/cat-small-gpu" --fp16
  cp "$RUN/run/version_0/kind_eval.csv" "$RUN/run/version_0/metrics.csv" "$OUT_DIR/"
}

case "${1:-}" in
  kit) kit ;;
  train) train ;;
  *) echo "usage: $0 kit|train"; exit 2 ;;
esac

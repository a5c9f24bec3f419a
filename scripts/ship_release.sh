#!/usr/bin/env bash
# Ship a trained cat-small run into the package with every add-on retrained on it, in the order docs/training.md gives
# (the add-ons read the tokenizer frozen, so each is redone on new weights), after the release check on every dev image.
# Resumable: a finished step (but the check) leaves a marker in SHIP (valid while the package holds the same tokenizer), the two region-fill trainings resume from their last.ckpt, and
# SHIP_TIME (DD:HH:MM:SS) stops each training process in time (exit 3: run the same command again to go on).
#
#   scripts/ship_release.sh TRAIN_OUT [STEP ...]        (make ship-release TRAIN_OUT=... [SHIP_TIME=...])
#   steps: check tokenizer fill fill-tail fill-pixels attach-fill block-head dhead card   then: make reports (docs/reports/, README figures)
#
# Knobs (environment): REAL_DATA, SHIP (markers and fill runs, default outputs/ship/<TRAIN_OUT's name>), SHIP_TIME, VENV.
# Times alone on 2 cores: check 2 min (every dev image against the shipped report; exit 4 if below), tokenizer 5 min
# (latent statistics, dev report, card), fill 38 min (4,000 batches at 1.75/s), fill-tail 16 min (1,500 batches with the merge adapter and
# decoder tail), fill-pixels 8 min (300 batches through the pixel merge), attach-fill 1 min, block-head 25 min, dhead about 40 min cold
# (the fill steps measured on v3, 2026-12-05, beside a niced reports chain).
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] || { echo "ship_release: give the training run's output folder (TRAIN_OUT, with run/version_0/)"; exit 2; }
TRAIN_OUT=${1%/}; shift
[ -d "$TRAIN_OUT/run/version_0" ] || { echo "ship_release: no run/version_0 in $TRAIN_OUT"; exit 2; }
REAL_DATA=${REAL_DATA:-../shared/data/real-v1}
SHIP=${SHIP:-outputs/ship/$(basename "$TRAIN_OUT")}
VENV=${VENV:-.venv}
CT=$VENV/bin/cat-tokenizer
PKG=src/cat_tokenizer/pretrained/cat-small
FILL=$SHIP/region_fill
TAIL=$SHIP/region_fill_tail
PIXELS=$SHIP/region_fill_pixels
TIME_ARG=${SHIP_TIME:+FILL_TIME=$SHIP_TIME}

# a marker holds the packaged tokenizer's fingerprint (weights without add-ons) after its step: a step counts as done only
# while the package holds those weights (a checkout that put the previous release back runs every step again)
source scripts/markers.sh
tokenizer_fp() { fingerprint_of "$PKG"; }
done_already() { marked_for "$SHIP/$1.done" "$(tokenizer_fp 2>/dev/null)" && echo "== ship: $1 done already ($(cat "$SHIP/$1.done"))"; }
mark() { mark_for "$SHIP/$1.done" "$(tokenizer_fp)"; }
# did FILL_OUT's run reach MAX_STEPS? (a SessionTimer stop exits 0 as a finished run does)
reached() {
  "$VENV/bin/python" - "$1/run/version_0/checkpoints/last.ckpt" "$2" <<'EOF'
import sys, torch
step = torch.load(sys.argv[1], map_location="cpu", weights_only=False)["global_step"]
sys.exit(0 if step >= int(sys.argv[2]) else print(f"ship: {sys.argv[1]} at step {step} of {sys.argv[2]}") or 3)
EOF
}
train_fill() {  # OUT MAX_STEPS [FILL_ARGS]
  make train-region-fill REAL_DATA="$REAL_DATA" FILL_OUT="$1" $TIME_ARG FILL_ARGS="${3:-}"
  reached "$1" "$2" || { echo "ship: stopped by SHIP_TIME; run the same command again to go on"; exit 3; }
}

# the release rule (docs/training.md) on every dev image, on the weights ship-small would take (make check-release)
step_check() {
  make check-release REAL_DATA="$REAL_DATA" TRAIN_OUT="$TRAIN_OUT" CHECK_OUT="$SHIP" \
    || { echo "ship: the release check failed or found the run below the shipped cat-small (above); not shipped"; exit 4; }
}
step_tokenizer() { make ship-small REAL_DATA="$REAL_DATA" TRAIN_OUT="$TRAIN_OUT"; }
step_fill() { train_fill "$FILL" 4000; }  # configs/region_fill.yaml: the fill from scratch on the shipped tokenizer
step_fill-tail() {
  train_fill "$TAIL" 1500 "--model.init_args.init_fill $FILL/run/version_0/pretrained --model.init_args.merge_adapter true \
    --model.init_args.tail true --model.init_args.tail_lr_ratio 0.5 --model.init_args.lr 2e-4 --trainer.max_steps 1500 \
    --model.init_args.decay_steps 1500"
}
# the fill for the pixel merge, decode_regions' default (docs/regions.md): 300 batches through each ratio's whole decode;
# the adapter and tail (features merge only) stay behind
step_fill-pixels() {
  train_fill "$PIXELS" 300 "--model.init_args.init_fill $TAIL/run/version_0/pretrained --model.init_args.merge pixels \
    --model.init_args.lr 2e-4 --model.init_args.warmup_steps 20 --model.init_args.decay_steps 300 --trainer.max_steps 300 \
    --trainer.val_check_interval 300"
}
# with decode_regions' default context pass on the 32x grid (docs/regions.md: +0.05-0.12 dB for 1.5x the decode)
step_attach-fill() { make ship-region-fill FILL_OUT="$PIXELS" EXPORT_ARGS="--region-context 32"; }
step_block-head() {  # --targets context (scripts/reports.sh), then attached to the package
  REAL_DATA="$REAL_DATA" scripts/reports.sh block-head
  "$CT" export --ckpt outputs/reports/bhead --out "$PKG" --fp16 --overwrite
}
step_dhead() {
  REAL_DATA="$REAL_DATA" scripts/reports.sh dhead
  "$CT" export --ckpt outputs/reports/dhead --out "$PKG" --fp16 --overwrite
}
step_card() { "$CT" card "$PKG" --measured docs/reports/demo-dev-128.md --notes "$PKG/NOTES.md"; }

ALL=(check tokenizer fill fill-tail fill-pixels attach-fill block-head dhead card)
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=("${ALL[@]}")
for s in "${STEPS[@]}"; do
  declare -F "step_$s" >/dev/null || { echo "ship_release: unknown step '$s'; steps: ${ALL[*]}"; exit 2; }
done
mkdir -p "$SHIP"
for s in "${STEPS[@]}"; do
  [ "$s" != check ] && done_already "$s" && continue  # the check always runs: the run may have trained on since
  echo "== ship: $s ($(date +%H:%M:%S))"
  "step_$s"
  [ "$s" = check ] || mark "$s"
done
echo "== ship: done. Then: make reports (docs/reports/); NOTES.md's history; if 'cat-tokenizer palette' fails, the new"
echo "   fingerprint(with_head=False) into SHORT_OF_THE_PALETTE (tests/test_cat_small.py); make test; commit the package"

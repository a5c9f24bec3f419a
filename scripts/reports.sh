#!/usr/bin/env bash
# Rewrite docs/reports/ for a tokenizer: every figure the README and docs/results.md quote, each file written by the
# command that measures it (no figure is copied by hand). Run it after a new cat-small ships (make reports).
#
#   scripts/reports.sh [STEP ...]        default: every step, in this order (hours on 2 CPU cores)
#   steps: curve run-curve picture demo palette classify gen-demo bench-gen bench-regions region-decodes region-fid region-refine region-probes block-head-targets distill-oracle distill-teacher dhead dhead-arms tail-pilot block-head rd rd-dials rd-no-context analyse dhead-256 rd-256 analyse-256 rd-256-regions rd-256-regions-beta block-head-256 rd-256-head256 latent-opt rd-curve
#
# Knobs (environment): REAL_DATA (real-v1: train/ and dev/), CKPT (tokenizer, default cat-small), RUN (a training run's
# log folder, for run-curve; default outputs/train_small/run/version_0), VENV, WORK (the
# commands' own folders with their caches, default outputs/reports: a killed step resumes from its caches), DOCS (where
# the reports go, default docs/reports), REDO=1 (run steps already done for this tokenizer).
# A chain longer than a session: a finished step leaves WORK/done/STEP with the tokenizer's fingerprint (its weights
# without add-ons) and is skipped when the same tokenizer comes again, so the same command, run again, goes on where
# it stopped. A new region fill or head on the same weights is not a new tokenizer: REDO=1 (or delete the marker).
# Times here, one step at a time on 2 cores: curve 1 s, picture 30 s, demo 1 min, palette 25 s, classify 3 min, gen-demo 2 min, bench-gen
# 4.5 min, bench-regions 20 s, region-decodes 10 min, region-fid 25 min, region-refine 10 min, region-probes 35 min (beside a training run), block-head-targets 40 min, distill-oracle 11 min, distill-teacher 3 min, dhead about 40 min cold (reconstructing all 8,463 training images: 24 min; then trunk statistics, 7 head fits and dev: 14 min on v2), dhead-arms 25 min after it, tail-pilot 50 min, block-head 25 min, rd 25 min + about 1 h 20 min for --regions (one budget: 30 map decodes, 21 of them refinement rounds and probes; an estimate from the 96-image pilots), rd-no-context 40 min after rd (its caches; every region map decoded again without the pass), rd-dials 5 min after rd, analyse 4 min; rd-256-regions-beta 70 min after rd-256-regions, block-head-256 48 min, rd-256-head256 about 45 min, latent-opt 25 min, rd-curve 47 min cold (about 30 min after rd: its caches).
set -euo pipefail
cd "$(dirname "$0")/.."

REAL_DATA=${REAL_DATA:-../shared/data/real-v1}
CKPT=${CKPT:-cat-small}
WORK=${WORK:-outputs/reports}
RUN=${RUN:-outputs/train_small/run/version_0}
CT=${VENV:-.venv}/bin/cat-tokenizer
DOCS=${DOCS:-docs/reports}
DEV=$REAL_DATA/dev
TRAIN=$REAL_DATA/train

need_real_data() {
  test -d "$DEV" -a -d "$TRAIN" || { echo "reports: no $DEV or $TRAIN; set REAL_DATA=<folder with train/ and dev/>"; exit 2; }
}

step_curve() { "$CT" curve "$CKPT" --report "$DOCS/training-curve.md"; }
# a training run's curve beside the tokenizer's, with the release check (exit 1 = not yet; the report is written either way)
step_run-curve() {
  [ -f "$RUN/kind_eval.csv" ] || { echo "reports: no training run at $RUN (set RUN=OUT/run/version_0): run-curve skipped"; return 0; }
  "$CT" curve "$RUN" --compare "$CKPT" --report "$DOCS/training-curve-run.md" || [ $? = 1 ]
}
# the README's picture: the embedded images (license-clean), written by demo, copied next to the docs
step_picture() { "$CT" demo --ckpt "$CKPT" --out "$WORK/demo-embedded" && cp "$WORK/demo-embedded/reconstructions.png" docs/reconstructions.png; }
step_demo() { "$CT" demo --data "$DEV" --ckpt "$CKPT" --per-kind 0 --out "$WORK/demo" --report "$DOCS/demo-dev-128.md"; }
# exit 1 = the palette target (36 dB, 3 levels) is not met; the report is written either way
step_palette() { "$CT" palette --ckpt "$CKPT" --out "$DOCS/palette-cat-small" || [ $? = 1 ]; }
step_classify() { "$CT" classify --ckpt "$CKPT" --out "$WORK/classify" --report "$DOCS/classify"; }
step_gen-demo() { "$CT" gen-demo --ckpt "$CKPT" --out "$WORK/gen-demo-$(fingerprint)" --report "$DOCS/gen-demo"; }
step_bench-regions() { "$CT" bench-regions --ckpt "$CKPT" --out "$DOCS/bench-regions-cpu.md"; }
step_bench-gen() { "$CT" bench-gen --preset S/2 --images 128 --mix paper --mix embedded --report "$DOCS/bench-gen-cpu.md"; }
step_region-decodes() { "$CT" region-decodes "$DEV" --ckpt "$CKPT" --per-kind 12 --out "$DOCS/region-decodes-dev-128.md"; }
# rFID of region maps against the shared budget's image weight (allocate_mean_psnr's beta), each beta decoded for real
step_region-fid() {
  "${VENV:-.venv}/bin/python" scripts/pilots/region_fid.py "$DEV" --ckpt "$CKPT" --cache "$WORK/rd128/recon_cache" \
    --betas 1,0.75,0.5,0.25,0 --real 1,0.75,0.5,0.25,0 --report "$DOCS/region-fid-pilot-128.md"
}
# region maps from errors in mixed decodes (Latin maps, rounds of real decodes): the pilot behind rd's "oracle, refined"
step_region-refine() {
  "${VENV:-.venv}/bin/python" scripts/pilots/region_refine.py "$DEV" --per-kind 24 --ckpt "$CKPT" --report "$DOCS/region-refine-pilot-128.md"
}
# refinement rounds on this tokenizer, plain and with probe decodes (each 2x2 coset of blocks moved to each other ratio):
# the pilot behind rd's "oracle, probed"
probes_arm() {  # PROBES REPORT
  "${VENV:-.venv}/bin/python" scripts/pilots/region_refine.py "$DEV" --per-kind 24 --ckpt "$CKPT" --rounds 3 --probes "$1" \
    --only-refined --report "$2"
}
step_region-probes() {
  probes_arm 0 "$DOCS/region-refine-rounds-128.md"
  probes_arm 4 "$DOCS/region-refine-probes-128.md"
}
# the block head trained on errors in whole-image decodes against errors in context (Latin-map region decodes), 800 train
# images each (one cache), its maps decoded for real on the region-refine pilot's 96 dev images
head_arm() {  # TARGETS REPORT: one block head (800 images, shared cache) and its maps decoded on the pilot's images
  "$CT" block-head "$TRAIN" --ckpt "$CKPT" --out "$WORK/bhead_targets" --max-images 800 --targets "$1"
  rm -rf "$WORK/bhead_$1" && mkdir -p "$WORK/bhead_$1" && cp "$WORK/bhead_targets"/{config.json,*.safetensors,block_head.md} "$WORK/bhead_$1/"
  "${VENV:-.venv}/bin/python" scripts/pilots/region_refine.py "$DEV" --per-kind 24 --ckpt "$WORK/bhead_$1" --rounds 0 --report "$2"
}
step_block-head-targets() {
  head_arm context "$DOCS/region-refine-pilot-head-context-128.md"
  head_arm whole "$DOCS/region-refine-pilot-head-whole-128.md"
}
# ratio heads on this tokenizer's trunk, source-held-out (docs/distillation.md): from its own errors, from the evaluator
step_distill-oracle() {
  "$CT" distill --target oracle --data "$TRAIN" --ckpt "$CKPT" --groups folder --max-images 1200 --cnn none --out "$WORK/oracle_head"
  cp "$WORK/oracle_head/distill.md" "$DOCS/distill-oracle-128.md"
}
step_distill-teacher() {
  "$CT" distill --data "$TRAIN" --ckpt "$CKPT" --groups folder --max-images 3000 --cnn none --out "$WORK/teacher_head"
  cp "$WORK/teacher_head/distill.md" "$DOCS/distill-teacher-128.md"
}
# the two heads trained on this tokenizer's trunk, source-held-out; their reports are the held-out errors
step_dhead() {
  "$CT" distortion-head "$TRAIN" --ckpt "$CKPT" --dev "$DEV" --out "$WORK/dhead"
  cp "$WORK/dhead/distortion.md" "$DOCS/distortion-head-128.md"
}
# what made the distortion head accurate: its inputs and their normalisation, on one 3,000-image measurement (docs/reconstruction.md)
step_dhead-arms() {
  local arm reads norm out
  {
    echo "# Distortion head arms: what it reads and how it normalises (3,000 training images, the head trained on the kept sources)"
    echo
    for arm in "trunk layer" "trunk standard" "trunk+pixels layer" "trunk+pixels standard"; do
      read -r reads norm <<< "$arm"
      out="$WORK/dhead-arm-${reads/+/-}-$norm"
      "$CT" distortion-head "$TRAIN" --ckpt "$CKPT" --dev "$DEV" --out "$out" --reads "$reads" --norm "$norm" \
        --max-images 3000 --final train --recon-cache "$WORK/dhead" > "$out.log" 2>&1 || { cat "$out.log"; return 1; }
      echo "## --reads $reads --norm $norm"
      echo
      sed '1,2d' "$out/distortion.md" | sed 's/^## /### /'
      echo
    done
  } > "$WORK/distortion-head-arms.md"
  cp "$WORK/distortion-head-arms.md" "$DOCS/distortion-head-arms.md"
}
# the decoder-tail pilot (docs/regions.md, "A decoder tail under the pixel merge"): 600 more batches of the tokenizer's
# region fill through the pixel merge (cat-small's), with and without a tail (its own copy of the decoder's shared
# up-stages for mixed maps), then region-decodes on each
step_tail-pilot() {
  local arm extra report fp
  fp=$(fingerprint)  # a run folder per tokenizer: make train-region-fill resumes whatever run its folder holds
  for arm in control tail; do
    extra="" report="$DOCS/region-decodes-tail-pilot-control.md"
    if [ "$arm" = tail ]; then
      extra="--model.init_args.tail true --model.init_args.tail_lr_ratio 0.5" report="$DOCS/region-decodes-tail-pilot-tail.md"
    fi
    make train-region-fill REAL_DATA="$REAL_DATA" FILL_OUT="$WORK/tail-pilot-px-$arm-$fp" FILL_ARGS="--model.init_args.tokenizer $CKPT \
      --model.init_args.init_fill $CKPT --model.init_args.merge pixels --model.init_args.lr 2e-4 --model.init_args.warmup_steps 20 \
      --model.init_args.decay_steps 900 --trainer.max_steps 600 --trainer.val_check_interval 300 $extra"
    "$CT" region-decodes "$DEV" --ckpt "$WORK/tail-pilot-px-$arm-$fp/run/version_0/pretrained" --per-kind 12 \
      --out "$report"
  done
}
step_block-head() {
  "$CT" block-head "$TRAIN" --ckpt "$CKPT" --dev "$DEV" --out "$WORK/bhead" --targets context
  cp "$WORK/bhead/block_head.md" "$DOCS/block-head-128.md"
}
# region maps at fixed 16x's 64 tokens, decode_regions' default decode (cat-small: the pixel merge and one context pass on
# the 32x grid; each budget costs about 30 min of decodes; --region-budgets 32,64,128 for the curve)
rd128() { "$CT" rd "$DEV" --ckpt "$CKPT" --distortion-head "$WORK/dhead" --regions --region-budgets 64 --out "$WORK/rd128" --quiet "$@"; }
step_rd() { rd128 --report "$DOCS/rd-dev-128"; }
# the dials against rFID at 64 tokens (docs/regions.md): beta (across images) and gamma (inside an image) on the oracle map;
# a report of its own, since it runs only these rows (the oracle's decode is rd's, cached)
step_rd-dials() {
  rd128 --region-methods "oracle; oracle, beta 0.5; oracle, gamma 0.5; oracle, gamma 0.25" --report "$DOCS/rd-dev-128-dials"
}
# the region curve: the decode-free maps and the oracle at half, one and twice fixed 16x's tokens (rd's cache; no distortion
# head: the image-level head rows are rd's report, this one is about the region rows)
step_rd-curve() {
  "$CT" rd "$DEV" --ckpt "$CKPT" --regions --region-budgets 32,64,128 --region-methods "oracle; head; variance; edges" \
    --out "$WORK/rd128" --quiet --report "$DOCS/rd-dev-128-curve"
}
# the same maps decoded without the context pass (docs/regions.md): what the default's pass adds
step_rd-no-context() { rd128 --region-context none --report "$DOCS/rd-dev-128-no-context"; }
step_analyse() {
  "$CT" analyse "$DEV" --ckpt "$CKPT" --recon-cache "$WORK/rd128/recon_cache" --distortion-head "$WORK/dhead" \
    --out "$WORK/analyse128" --report "$DOCS/analyse-dev-128" --quiet
}
# the same views at 256 px, whole images resized (issue 25 item 5): a head on 3,000 train images at 256 px, rd (image-level
# views), the same with region maps at fixed 16x's 256 tokens (hours: it rewrites the report with a regions section), analyse
step_dhead-256() {
  "$CT" distortion-head "$TRAIN" --ckpt "$CKPT" --dev "$DEV" --image-size 256 --crop resize --max-images 3000 --out "$WORK/dhead256"
  cp "$WORK/dhead256/distortion.md" "$DOCS/distortion-head-256.md"
}
rd256() { "$CT" rd "$DEV" --ckpt "$CKPT" --image-size 256 --crop resize --distortion-head "$WORK/dhead256" --out "$WORK/rd256" --quiet "$@"; }
step_rd-256() { rd256 --report "$DOCS/rd-dev-256"; }
# at 256 px a map decode of all dev takes about 5 min alone: the beta-0.5 rows (about 18 decodes) are a step of their own
step_rd-256-regions() {
  rd256 --regions --region-budgets 256 --report "$DOCS/rd-dev-256" \
    --region-methods "oracle; oracle, refined; oracle, probed; oracle, per image; head; head, probed; variance; edges"
}
step_rd-256-regions-beta() { rd256 --regions --region-budgets 256 --report "$DOCS/rd-dev-256"; }
# a block head of its own size for the predicted 256-px rows (cat-small's is a 128-px head): 500 train images resized to
# 256 px (32,000 blocks; the 128-px head had 24,000), then its two map rows on dev (a new head is a new region cache)
step_block-head-256() {
  "$CT" block-head "$TRAIN" --ckpt "$CKPT" --dev "$DEV" --image-size 256 --crop resize --max-images 500 --budget 256 \
    --targets context --out "$WORK/bhead256"
  cp "$WORK/bhead256/block_head.md" "$DOCS/block-head-256.md"
}
step_rd-256-head256() {
  rd256 --ckpt "$WORK/bhead256" --regions --region-budgets 256 --region-methods "head; head, probed" --report "$DOCS/rd-dev-256-head256"
}
# encoder-side optimisation of the sent cells, fixed 16x and region latents at equal steps (48 dev images)
step_latent-opt() {
  "${VENV:-.venv}/bin/python" scripts/pilots/latent_opt.py "$DEV" --ckpt "$CKPT" --per-kind 12 --steps 0,10,30 --lr 0.05 \
    --report "$DOCS/latent-opt-pilot-128.md"
}
step_analyse-256() {
  "$CT" analyse "$DEV" --ckpt "$CKPT" --image-size 256 --crop resize --recon-cache "$WORK/rd256/recon_cache" \
    --distortion-head "$WORK/dhead256" --out "$WORK/analyse256" --report "$DOCS/analyse-dev-256" --quiet
}

# gen-demo's latent cache belongs to one tokenizer: a folder per weight fingerprint
source scripts/markers.sh
fingerprint() { fingerprint_of "$CKPT"; }

ALL=(curve run-curve picture demo palette classify gen-demo bench-gen bench-regions region-decodes region-fid region-refine region-probes block-head-targets distill-oracle distill-teacher dhead dhead-arms tail-pilot block-head rd rd-dials rd-no-context analyse dhead-256 rd-256 analyse-256 rd-256-regions rd-256-regions-beta block-head-256 rd-256-head256 latent-opt rd-curve)
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=("${ALL[@]}")
for s in "${STEPS[@]}"; do
  declare -F "step_$s" >/dev/null || { echo "reports: unknown step '$s'; steps: ${ALL[*]}"; exit 2; }
done
need_real_data
mkdir -p "$DOCS" "$WORK/done"
FP=$(fingerprint)
for s in "${STEPS[@]}"; do
  # run-curve reads a training run (RUN), not only the tokenizer: no marker, it always runs (a second)
  marker="$WORK/done/$s"
  [ "$s" = run-curve ] && marker=/dev/null
  if [ -z "${REDO:-}" ] && marked_for "$marker" "$FP"; then
    echo "== reports: $s done already for tokenizer $FP ($(cut -d' ' -f1 "$marker"); REDO=1 runs it again)"
    continue
  fi
  echo "== reports: $s ($(date +%H:%M:%S))"
  "step_$s"
  mark_for "$marker" "$FP"
done

#!/usr/bin/env bash
# Class-conditional DiT on ImageNet CAT latents (docs/generation.md), two steps:
#   1. lightning predict -c configs/dit_encode.yaml   encode every image once at its ratio into a latent cache
#                                                     (resumable: files already encoded are skipped)
#   2. lightning fit -c configs/dit_imagenet.yaml     train the DiT on the cached variable-size latents
#
#   IMAGENET_DIR=/data/imagenet/train scripts/gen_imagenet.sh        (make gen-imagenet IMAGENET_DIR=... does this)
#
# Knobs (environment): IMAGENET_DIR (class subfolders; required), CKPT (tokenizer, default cat-small),
# RATIO_MODE (adaptive | fixed:8 | fixed:16 | fixed:32), DIT (S_2 | B_2 | L_2 | XL_2: configs/dit/), LATENTS
# (cache folder), FLIP (also encode the mirrored image: true | false), OUT (run folder), GEN_ARGS (more fit flags).
set -euo pipefail
cd "$(dirname "$0")/.."

test -n "${IMAGENET_DIR:-}" || { echo "gen-imagenet: set IMAGENET_DIR=<folder of class subfolders, e.g. /data/imagenet/train> (and CKPT=<tokenizer>)"; exit 2; }
CKPT=${CKPT:-cat-small}
RATIO_MODE=${RATIO_MODE:-adaptive}
DIT=${DIT:-B_2}
LATENTS=${LATENTS:-outputs/gen_imagenet/latents}
FLIP=${FLIP:-true}
OUT=${OUT:-outputs/gen_imagenet}
BIN=${VENV:-.venv}/bin

ASSIGN=$RATIO_MODE
[ "$RATIO_MODE" = adaptive ] && ASSIGN=complexity
# the DiT's input channels are the tokenizer's latent channels
LATENT_CH=$("$BIN/python" -c "from cat_tokenizer.io import load_vae; print(load_vae('$CKPT').latent_channels)")

"$BIN/lightning" predict -c configs/dit_encode.yaml --data.root "$IMAGENET_DIR" --model.tokenizer "$CKPT" \
  --model.cache_dir "$LATENTS" --data.skip_encoded "$LATENTS" --model.flip "$FLIP" --data.ratio_assignment "$ASSIGN"
# shellcheck disable=SC2086
"$BIN/lightning" fit -c configs/dit_imagenet.yaml --model.dit "configs/dit/$DIT.yaml" --model.dit.init_args.in_channels "$LATENT_CH" \
  --data.cache_dir "$LATENTS" --model.tokenizer "$CKPT" --data.ratio_mode "$RATIO_MODE" --trainer.default_root_dir "$OUT" ${GEN_ARGS:-}

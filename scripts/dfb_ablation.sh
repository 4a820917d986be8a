#!/usr/bin/env bash
# Why does the (K+1)-class DFB network classify worse than the K-class classifier, and what closes
# the gap? One classifier and its pseudo masks, then the DFB stage once per variant; the table
# compares ID test top-1, val top-1 (held-out training images) and mask pixel accuracy, all from
# train.py's final metrics (no OOD evaluation: this is about classification).
#
#   bash scripts/dfb_ablation.sh                         # PRESET=cpu sizes; -> runs/dfb_ablation/ABLATION.md
#   PRESET=cpu DEVICE=cuda STEPS_CLS=2000 bash scripts/dfb_ablation.sh
#
# Variants (VARIANTS, one per line "name|DFB train.py flags"; @CLS_CKPT is the classifier): the
# preset's DFB_FLAGS (initialised from the classifier + image-level loss), and the same without the
# initialisation, without the image loss, and without both (the DFB stage as the paper trains it:
# from its own initialisation, dense loss only).
# Environment: PRESET [cpu], SHARED_DATA [../shared/data], OUT [runs/dfb_ablation], DATA_DIR
# [dataset/reproduce_small/train<N>_test<N>_oodall, shared with reproduce_small.sh], TRAIN_PER_CLASS /
# TEST_PER_CLASS (first N images per class, for tiny runs) [all], PYTHON, SEED [0],
# VARIANTS, and the preset's variables (MODEL, STEPS_CLS, STEPS_DFB, BASE_LR, DEVICE, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PRESET=${PRESET:-cpu}
# shellcheck source=configs/reproduce_cpu.env
source "configs/reproduce_$PRESET.env"
SHARED_DATA=${SHARED_DATA:-$(cd .. && pwd)/shared/data}
OUT=${OUT:-runs/dfb_ablation}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-}  # first N images per class, for tiny test runs
TEST_PER_CLASS=${TEST_PER_CLASS:-}
DATA_DIR=${DATA_DIR:-dataset/reproduce_small/train${TRAIN_PER_CLASS:-all}_test${TEST_PER_CLASS:-all}_oodall}
SEED=${SEED:-0}
RECIPE_FLAGS=${DFB_FLAGS//--init_from @CLS_CKPT/}
RECIPE_FLAGS=${RECIPE_FLAGS//--image_loss_weight 1/}
VARIANTS=${VARIANTS:-"preset|$DFB_FLAGS
no_init|${DFB_FLAGS//--init_from @CLS_CKPT/}
no_image_loss|${DFB_FLAGS//--image_loss_weight 1/}
neither|$RECIPE_FLAGS"}

ID="$DATA_DIR/cifar10"
CLS_CKPT="$OUT/runs/cls/checkpoint.pth.tar"
MASKS="$OUT/masks/train"
$PY unpack_shared_data.py --shared "$SHARED_DATA" --out "$DATA_DIR" --ood \
  --train_per_class "$TRAIN_PER_CLASS" --test_per_class "$TEST_PER_CLASS" > /dev/null
COMMON=(--datadir "$ID/train" --test_datadir "$ID/test" --model "$MODEL" --pretrained "$PRETRAINED"
        --base_lr "$BASE_LR" --resolution "$RESOLUTION" --train_resize "$TRAIN_RESIZE" --batch "$BATCH"
        --device "$DEVICE" --workers "$WORKERS" --seed "$SEED" --logdir "$OUT/runs" --eval_every 0)
read -r -a cls_flags <<< "$CLS_FLAGS"
$PY train.py --task cls --name cls --steps "$STEPS_CLS" "${COMMON[@]}" "${cls_flags[@]}"
$PY make_cam.py --dataset="$ID/train" --model_path="$CLS_CKPT" --out "$MASKS" \
  --head_size="$(find "$ID/train" -mindepth 1 -maxdepth 1 -type d | wc -l | tr -d ' ')" \
  --batch "$CAM_BATCH" --device "$DEVICE" --workers "$WORKERS"
names=()
while IFS= read -r line; do
  [ -n "${line//[[:space:]]/}" ] || continue
  name=${line%%|*} flags=${line#*|}
  read -r -a flags <<< "${flags//@CLS_CKPT/$CLS_CKPT}"
  $PY train.py --task dfb --name "dfb_$name" --steps "$STEPS_DFB" --mask_dir "$MASKS" "${COMMON[@]}" "${flags[@]}"
  names+=("$name")
done <<< "$VARIANTS"
$PY -m reporting.ablation_table --run_dir "$OUT" --variants "${names[@]}" --out "$OUT/ABLATION.md"

#!/usr/bin/env bash
# Pilots of the CIFAR-resolution classifier recipe (docs/CIFAR_RECIPE.md): each candidate trains from
# scratch at 32 px on CIFAR-10's training split with 10 % of it held out (seed 0) for the same training
# compute (PILOT_PFLOP, counted as bench/recipe_pilots.py counts it), then a table of their val top-1,
# plain and with flip test-time augmentation, is printed. Test and OOD images are never read.
#
#   bash scripts/cifar_recipe_pilots.sh                      # the backbone pilots; -> runs/cifar_pilots/
#   CANDIDATES="$(cat my_candidates.txt)" bash scripts/cifar_recipe_pilots.sh
#
# Environment [defaults]: SHARED_DATA, DATA_DIR [dataset/reproduce_small/trainall_testall_oodall],
# OUT [runs/cifar_pilots], PILOT_PFLOP [0.1] (OMP_NUM_THREADS sets the torch threads),
# CANDIDATES: lines "name|model|batch|base lr|train.py flags" [the backbone candidates of docs/CIFAR_RECIPE.md],
# TRAIN_PER_CLASS (first N training images per class, tiny runs) [all].
# A finished pilot is skipped when rerun (train.py leaves a finished run alone).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/shared_data.sh
SHARED_DATA=$(find_shared_data)
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-}
DATA_DIR=${DATA_DIR:-dataset/reproduce_small/train${TRAIN_PER_CLASS:-all}_testall_oodall}
OUT=${OUT:-runs/cifar_pilots}
PILOT_PFLOP=${PILOT_PFLOP:-0.1}
BASE="--resolution 32 --train_resize 36 --holdout 0.1 --amp bf16 --pretrained none --weight_decay 5e-4 --nesterov"
CANDIDATES=${CANDIDATES:-"S|ResNetV2-C32-S|256|0.2|$BASE --schedule cosine --label_smoothing 0.1
M|ResNetV2-C32-M|256|0.2|$BASE --schedule cosine --label_smoothing 0.1
L|ResNetV2-C32-L|256|0.2|$BASE --schedule cosine --label_smoothing 0.1"}

$PY unpack_shared_data.py --shared "$SHARED_DATA" --out "$DATA_DIR" --ood --train_per_class "$TRAIN_PER_CLASS" \
  > /dev/null
names=()
while IFS='|' read -r name model batch lr flags; do
  [ -n "${name//[[:space:]]/}" ] || continue
  read -r -a flag_list <<< "$flags"
  steps=$($PY -m bench.recipe_pilots steps --model "$model" --resolution 32 --batch "$batch" --pflop "$PILOT_PFLOP")
  echo "== pilot $name: $model, $steps steps x $batch, base lr $lr: $flags"
  $PY train.py --task cls --datadir "$DATA_DIR/cifar10/train" --model "$model" --batch "$batch" --steps "$steps" \
    --base_lr "$lr" --device cpu --workers 2 --seed 0 --logdir "$OUT" --name "$name" --eval_every 0 "${flag_list[@]}"
  names+=("$name")
done <<< "$CANDIDATES"
$PY -m bench.recipe_pilots table --runs "$OUT" --datadir "$DATA_DIR/cifar10/train" "${names[@]}"

#!/usr/bin/env bash
# The classifier's fine-tuning recipe of PRESET=cpu_pretrained, chosen on validation images
# (docs/PRETRAINED.md §2): each candidate fine-tunes from the pretrained npz for a short pilot, with the
# same 2 % of CIFAR-10's training images held out, and the table of their val top-1 is printed.
#
#   bash scripts/cls_recipe_pilots.sh        # about 12 minutes on 2 cores; -> runs/cls_pilots/
#
# Environment [defaults]: SHARED_DATA, DATA_DIR [dataset/reproduce_small/trainall_testall_oodall, the folder
# reproduce_small.sh unpacks into], PRETRAINED [pretrained/ResNetV2-Tiny-TIN.npz, made by scripts/pretrain.sh
# when absent], OUT [runs/cls_pilots], PILOT_STEPS [1000], CANDIDATES (lines "name|base lr|train.py flags")
# [the three of docs/PRETRAINED.md], TRAIN_PER_CLASS (first N training images per class, tiny runs) [all].
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/shared_data.sh
SHARED_DATA=$(find_shared_data)
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-}
DATA_DIR=${DATA_DIR:-dataset/reproduce_small/train${TRAIN_PER_CLASS:-all}_testall_oodall}
PRETRAINED=${PRETRAINED:-pretrained/ResNetV2-Tiny-TIN.npz}
OUT=${OUT:-runs/cls_pilots}
PILOT_STEPS=${PILOT_STEPS:-1000}
COMMON="--holdout 0.02 --amp bf16"
CANDIDATES=${CANDIDATES:-"bit|0.003|--schedule bit $COMMON
cpu|0.1|--schedule cosine --weight_decay 5e-4 --nesterov --label_smoothing 0.1 $COMMON
cpu_low_lr|0.01|--schedule cosine --weight_decay 5e-4 --nesterov --label_smoothing 0.1 $COMMON"}

[ -f "$PRETRAINED" ] || NPZ=$PRETRAINED bash scripts/pretrain.sh
$PY unpack_shared_data.py --shared "$SHARED_DATA" --out "$DATA_DIR" --ood --train_per_class "$TRAIN_PER_CLASS" \
  > /dev/null
names=()
while IFS='|' read -r name lr flags; do
  [ -n "${name//[[:space:]]/}" ] || continue
  read -r -a flag_list <<< "$flags"
  echo "== pilot $name (base lr $lr): $flags"
  $PY train.py --task cls --datadir "$DATA_DIR/cifar10/train" --model ResNetV2-Tiny --pretrained "$PRETRAINED" \
    --resolution 64 --train_resize 72 --batch 128 --steps "$PILOT_STEPS" --base_lr "$lr" --device cpu --workers 2 \
    --seed 0 --logdir "$OUT" --name "$name" --eval_every 0 "${flag_list[@]}"
  names+=("$name")
done <<< "$CANDIDATES"
$PY - "$OUT" "${names[@]}" <<'PYTHON'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| candidate | val top-1 % (held-out training images) |\n|---|---|")
for name in names:
    metrics = json.load(open(f"{out}/{name}/final_metrics.json"))
    print(f"| {name} | {100 * metrics['val_top1']:.2f} |")
PYTHON

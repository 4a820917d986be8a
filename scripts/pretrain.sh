#!/usr/bin/env bash
# Pretrain a ResNetV2 on Tiny ImageNet's images (our laptop-scale stand-in for BiT's ImageNet
# pretraining) and write its body as a BiT .npz, which `train.py --pretrained <npz>` loads exactly as it
# loads BiT-M-R50x1-ILSVRC2012.npz (head left out, zero-initialised there).
#
#   bash scripts/pretrain.sh          # -> pretrained/ResNetV2-Tiny-TIN.npz (about 50 minutes on 2 cores)
#
# Stages: unpack tin_train.tar.gz of the shared data folder (101,000 images of 202 classes, 64x64, with
# object boxes; 2 % of each class, $DATA_DIR/tin/val, held out) -> train.py --task cls on the rest (top-1 on
# the held-out val split in $OUT/tin/final_metrics.json) -> export_npz.py. The held-out images are also
# the set on which CAMs are compared with the object boxes (make_cam.py --boxes). Rerunning resumes the training from its checkpoint;
# once NPZ exists nothing is done (delete it to export again).
#
# Environment [defaults]:
#   SHARED_DATA  the shared archives [../shared/data beside the checkout]
#   DATA_DIR     unpacked images [dataset/pretrain]        OUT   the training run [runs/pretrain]
#   NPZ          the weights written [pretrained/$MODEL-TIN.npz]
#   MODEL [ResNetV2-Tiny] RESOLUTION [64] TRAIN_RESIZE [72] BATCH [128] STEPS [15000] BASE_LR [0.1]
#   DEVICE [cpu] WORKERS [2] SEED [0] PER_CLASS (first N images per class, tiny test runs) [all]
#   FLAGS        further train.py flags [the from-scratch recipe of configs/reproduce_cpu_tiny64.env's classifier]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/shared_data.sh
SHARED_DATA=$(find_shared_data)
DATA_DIR=${DATA_DIR:-dataset/pretrain}
OUT=${OUT:-runs/pretrain}
MODEL=${MODEL:-ResNetV2-Tiny}
NPZ=${NPZ:-pretrained/$MODEL-TIN.npz}
RESOLUTION=${RESOLUTION:-64}
TRAIN_RESIZE=${TRAIN_RESIZE:-72}
BATCH=${BATCH:-128}
STEPS=${STEPS:-15000}
BASE_LR=${BASE_LR:-0.1}
DEVICE=${DEVICE:-cpu}
WORKERS=${WORKERS:-2}
SEED=${SEED:-0}
PER_CLASS=${PER_CLASS:-}
FLAGS=${FLAGS:---schedule cosine --weight_decay 5e-4 --nesterov --label_smoothing 0.1 --amp bf16}

if [ -f "$NPZ" ]; then
  echo "[pretrain] $NPZ exists: nothing to do (delete it to export again)"
  exit 0
fi
tin=$($PY unpack_shared_data.py --shared "$SHARED_DATA" --out "$DATA_DIR" --tin --train_per_class "$PER_CLASS")
read -r -a flags <<< "$FLAGS"
$PY train.py --task cls --datadir "$tin/train" --test_datadir "$tin/val" --model "$MODEL" --pretrained none \
  --resolution "$RESOLUTION" --train_resize "$TRAIN_RESIZE" --batch "$BATCH" --steps "$STEPS" --base_lr "$BASE_LR" \
  --device "$DEVICE" --workers "$WORKERS" --seed "$SEED" --logdir "$OUT" --name tin --eval_every 0 "${flags[@]}"
$PY export_npz.py --checkpoint "$OUT/tin/checkpoint.pth.tar" --out "$NPZ"

#!/usr/bin/env bash
# Stage 3: train DFB's (K+1)-class dense network of each ID data set on its pseudo masks
# ($DATA_ROOT/<dataset>/train_mask, written by make_cam.py). Settings: see scripts/common.sh.
source "$(dirname "$0")/common.sh"
for ds in $DATASETS; do
  require_id_data "$ds"
  require_split "$DATA_ROOT/$ds/train_mask" "Write the pseudo masks first:
  $PYTHON make_cam.py --dataset=$DATA_ROOT/$ds/train --model_path=$CLS_DIR/$ds.pth.tar --head_size=$(num_classes "$ds")"
done
require_weights
for ds in $DATASETS; do
  echo "[train] $ds: DFB dense network $MODEL on $DATA_ROOT/$ds/train + train_mask (run $LOGDIR/${ds}_dfb)"
  run_train "$ds" dfb "${ds}_dfb"
done

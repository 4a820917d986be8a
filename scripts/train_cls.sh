#!/usr/bin/env bash
# Stage 1: fine-tune the K-class BiT classifier of each ID data set and export it to
# $CLS_DIR/<dataset>.pth.tar (the input of make_cam.py). Settings: see scripts/common.sh.
source "$(dirname "$0")/common.sh"
for ds in $DATASETS; do
  require_id_data "$ds"
done
require_weights
for ds in $DATASETS; do
  echo "[train_cls] $ds: classifier $MODEL on $DATA_ROOT/$ds/train -> $CLS_DIR/$ds.pth.tar (run $LOGDIR/${ds}_cls)"
  run_train "$ds" cls "${ds}_cls" --export "$CLS_DIR/$ds.pth.tar"
done

#!/usr/bin/env bash
# Stage 4: OOD evaluation of the DFB network and, as the baseline, of the K-class classifier,
# for each ID data set against $OOD_SETS (and the other CIFAR when present).
# Results: $RESULTS/<dataset>_{dfb,cls}/results.csv and results.md. Settings: scripts/common.sh.
source "$(dirname "$0")/common.sh"
declare -A OOD_PATHS
for ds in $DATASETS; do
  require_id_data "$ds"
  [ -f "$LOGDIR/${ds}_dfb/checkpoint.pth.tar" ] || fail "$LOGDIR/${ds}_dfb/checkpoint.pth.tar not found: run bash scripts/train.sh first"
  paths=()
  for ood in $OOD_SETS $(other_cifar "$ds"); do
    if [ -d "$DATA_ROOT/$ood/test" ]; then paths+=("$DATA_ROOT/$ood/test")
    elif [ "$ood" = "$(other_cifar "$ds")" ]; then echo "[eval] note: $DATA_ROOT/$ood/test not found, skipping that OOD set"
    else fail "OOD set $DATA_ROOT/$ood/test not found. Prepare it with: $PYTHON prepare_data.py --root $DATA_ROOT --datasets $ood (or set OOD_SETS)"
    fi
  done
  OOD_PATHS[$ds]="${paths[*]}"
done
for ds in $DATASETS; do
  for stage in dfb cls; do
    if [ "$stage" = dfb ]; then ckpt="$LOGDIR/${ds}_dfb/checkpoint.pth.tar"; else ckpt="$CLS_DIR/$ds.pth.tar"; fi
    [ -f "$ckpt" ] || { echo "[eval] $ckpt not found, skipping the $stage evaluation of $ds"; continue; }
    echo "[eval] $ds $stage: $ckpt vs ${OOD_PATHS[$ds]} -> $RESULTS/${ds}_$stage"
    "$PYTHON" eval.py --model_path "$ckpt" --id_train_path "$DATA_ROOT/$ds/train" \
      --id_test_path "$DATA_ROOT/$ds/test" --ood_path ${OOD_PATHS[$ds]} --logdir "$RESULTS/${ds}_$stage" $(common_flags)
  done
done

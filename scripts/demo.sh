#!/usr/bin/env bash
# The whole DFB method in one command, offline, on a CPU: classifier -> pseudo masks ->
# dense (K+1)-class network -> OOD evaluation, then the results table and the figures, and
# score.py with the fitted detector on a few ID and OOD images.
#
#   bash scripts/demo.sh                 # embedded synthetic benchmark (generated, no download)
#   bash scripts/demo.sh dataset         # the same flow on real data: dataset/cifar10 + OOD sets
#
# Environment: OUT (demo_out), DEVICE (auto), SEED (0), WORKERS (2); the demo's settings, whose
# defaults (and the reasons for them) are in configs/demo.env: MODEL, PRETRAINED, RESOLUTION,
# TRAIN_RESIZE, BATCH, BASE_LR, STEPS_CLS / STEPS_DFB, and for the synthetic data only
# TRAIN_PER_CLASS, TEST_PER_CLASS, OOD_PER_SET;
# real data only: ID_NAME (cifar10), OOD_SETS ("SVHN Places Textures cifar100", those present).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
PY=.venv/bin/python
# shellcheck source=configs/demo.env
source configs/demo.env
OUT=${OUT:-demo_out}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
WORKERS=${WORKERS:-2}
start=$(date +%s)

if [ $# -eq 0 ]; then
  echo "== 1/7 generating the embedded benchmark into $OUT/data (seed $SEED)"
  $PY make_demo_data.py --out "$OUT/data" --seed "$SEED" --train_per_class "$TRAIN_PER_CLASS" \
    --test_per_class "$TEST_PER_CLASS" --ood "$OOD_PER_SET"
  ID="$OUT/data/synthetic"
  OOD=("$OUT/data/SynthNewObjects/test" "$OUT/data/SynthNewBackgrounds/test" "$OUT/data/SynthClutter/test")
  TRUE_MASKS=(--true_masks "$ID/train_gtmask")
else
  ID="$1/${ID_NAME:-cifar10}"
  [ -d "$ID/train" ] && [ -d "$ID/test" ] || { echo "[error] $ID/train and $ID/test are needed (ImageFolder)"; exit 1; }
  OOD=()
  for name in ${OOD_SETS:-SVHN Places Textures cifar100}; do
    [ -d "$1/$name/test" ] && [ "$1/$name" != "$ID" ] && OOD+=("$1/$name/test")
  done
  [ ${#OOD[@]} -gt 0 ] || { echo "[error] no OOD set found under $1 (looked for ${OOD_SETS:-SVHN Places Textures cifar100})"; exit 1; }
  TRUE_MASKS=()
  echo "== 1/7 real data: ID $ID, OOD ${OOD[*]}"
fi
K=$(find "$ID/train" -mindepth 1 -maxdepth 1 -type d | wc -l | tr -d ' ')
COMMON=(--model "$MODEL" --pretrained "$PRETRAINED" --base_lr "$BASE_LR" --resolution "$RESOLUTION" --train_resize "$TRAIN_RESIZE" --batch "$BATCH" --device "$DEVICE"
        --workers "$WORKERS" --seed "$SEED" --logdir "$OUT/runs" --eval_every 0)

echo "== 2/7 classifier ($MODEL, $STEPS_CLS steps)"
$PY train.py --task cls --datadir "$ID/train" --test_datadir "$ID/test" --name cls --steps "$STEPS_CLS" \
  --export "$OUT/cls_pretrained_models/classifier.pth.tar" "${COMMON[@]}"

echo "== 3/7 pseudo masks from CAMs"
$PY make_cam.py --dataset="$ID/train" --model_path="$OUT/cls_pretrained_models/classifier.pth.tar" --head_size="$K" \
  --device "$DEVICE" --workers "$WORKERS" "${TRUE_MASKS[@]}"

echo "== 4/7 DFB dense (K+1)-class network ($STEPS_DFB steps)"
$PY train.py --task dfb --datadir "$ID/train" --test_datadir "$ID/test" --name dfb --steps "$STEPS_DFB" "${COMMON[@]}"

echo "== 5/7 OOD evaluation of the classifier (baseline scores)"
$PY eval.py --model_path "$OUT/cls_pretrained_models/classifier.pth.tar" --id_train_path "$ID/train" \
  --id_test_path "$ID/test" --ood_path "${OOD[@]}" --logdir "$OUT/results_cls" --device "$DEVICE" --workers "$WORKERS" \
  > "$OUT/eval_cls.log"
echo "   classifier results: $OUT/results_cls/results.md"

echo "== 6/7 OOD evaluation of DFB"
$PY eval.py --model_path "$OUT/runs/dfb/checkpoint.pth.tar" --id_train_path "$ID/train" \
  --id_test_path "$ID/test" --ood_path "${OOD[@]}" --logdir "$OUT/results_dfb" --device "$DEVICE" --workers "$WORKERS" \
  --save_detector

echo
echo "== 7/7 score.py: the fitted detector (DFB-ViM) on 2 images of the ID test set and of each OOD set"
IMAGES=()
for dir in "$ID/test" "${OOD[@]}"; do
  while IFS= read -r file; do IMAGES+=("$file"); done < <(find "$dir" -type f \( -iname "*.png" -o -iname "*.jpg" \
    -o -iname "*.jpeg" \) -not -name ".*" | sort | head -n 2)
done
$PY score.py --detector "$OUT/results_dfb/detector.pt" --images "${IMAGES[@]}" --out "$OUT/scores.csv" \
  --device "$DEVICE" --workers 0
head -n 9 "$OUT/scores.csv"

echo
echo "== Figures"
find "$OUT/results_dfb/figures" "$ID/train_mask" -maxdepth 1 -name "*.png" | sort
echo "== done in $(( $(date +%s) - start )) s; baseline classifier table: $OUT/results_cls/results.md"

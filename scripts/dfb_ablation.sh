#!/usr/bin/env bash
# Variants of the DFB stage on ONE classifier and its pseudo masks: each variant is trained with one
# seed, evaluated on every OOD set, and compared in three tables (reporting/ablation_table.py):
# classification and validation numbers (ID test / val top-1, mask pixel accuracy and foreground IoU
# on held-out pseudo masks, mean validation AUROC of DFB-x, the background's validated direction),
# per OOD set the background-alone AUROC and how many DFB-x beat x, and the dense foregrounds'
# blob IoU per set. It is scripts/reproduce_small.sh with the first variant as DFB_FLAGS and the
# others as DFB_ABLATIONS, so it resumes like it and accepts its variables (FROM_RUN among them).
#
#   bash scripts/dfb_ablation.sh                     # PRESET=cpu; -> runs/dfb_ablation/ABLATION.md
#   ID=cifar100 PRESET=cpu_pretrained bash scripts/dfb_ablation.sh   # the same with CIFAR-100 as ID
#   FROM_RUN=../shared/runs/cifar10_cpu_classifier_and_masks.tar.gz bash scripts/dfb_ablation.sh
#   SEEDS="0 1 2" ... bash scripts/dfb_ablation.sh    # the first variant with three seeds (docs/RESULTS.md, CPU run 3)
#
# Variants (VARIANTS, one per line "name|DFB train.py flags"; @CLS_CKPT is the classifier), by default
# the four of docs/DFB_VARIANTS.md: the preset's DFB_FLAGS (initialised from the classifier, image-level
# loss, label smoothing), the paper's loss alone (per-pixel cross-entropy), and each with the
# release's DeepLab-style random scale + crop (--scale_range 0.5 2.0).
# Environment: PRESET [cpu], OUT [runs/dfb_ablation], SEEDS [$SEED or 0: the first variant is trained
# with each, the others with the first], VARIANTS, and every variable of
# scripts/reproduce_small.sh (SHARED_DATA, FROM_RUN, TRAIN_PER_CLASS, STEPS_DFB, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export PRESET=${PRESET:-cpu}
# shellcheck source=configs/reproduce_cpu.env
source "configs/reproduce_$PRESET.env"
export OUT=${OUT:-runs/dfb_ablation}
export SEEDS=${SEEDS:-${SEED:-0}}
read -r FIRST_SEED _ <<< "$SEEDS"
SCALE="--scale_range 0.5 2.0"
DENSE_ONLY="--schedule cosine --weight_decay 5e-4 --nesterov --init_from @CLS_CKPT --amp bf16"
PRESET_DFB=${DFB_FLAGS/ --scale_range 0.5 2.0/}
VARIANTS=${VARIANTS:-"preset|$PRESET_DFB
dense_only|$DENSE_ONLY
dense_only_scale|$DENSE_ONLY $SCALE
preset_scale|$PRESET_DFB $SCALE"}

names=() first_flags="" ablations=""
while IFS= read -r line; do
  [ -n "${line//[[:space:]]/}" ] || continue
  if [ ${#names[@]} -eq 0 ]; then
    first_flags=${line#*|}
    names+=("seed$FIRST_SEED")
  else
    ablations+="$line"$'\n'
    names+=("$(echo "${line%%|*}" | tr -d '[:space:]')")
  fi
done <<< "$VARIANTS"
[ ${#names[@]} -gt 0 ] || { echo "[error] VARIANTS is empty" >&2; exit 2; }
export DFB_FLAGS=$first_flags DFB_ABLATIONS=$ablations
bash scripts/reproduce_small.sh
PY=${PYTHON:-.venv/bin/python}
$PY -m reporting.ablation_table --run_dir "$OUT" --variants "${names[@]}" --fusion "${FUSION:-logit}" \
  --out "$OUT/ABLATION.md"
echo "The first variant ('${VARIANTS%%|*}') is reported as seed$FIRST_SEED."

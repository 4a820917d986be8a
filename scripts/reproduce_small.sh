#!/usr/bin/env bash
# DFB on real data: CIFAR-10 (or CIFAR-100) as ID, every real OOD set of the shared data folder, the
# whole pipeline, then a Markdown report of the run.
#
#   bash scripts/reproduce_small.sh                       # PRESET=gpu: ~8 minutes of one H100 / H200
#   PRESET=cpu SEEDS="0 1 2" bash scripts/reproduce_small.sh   # a 2-core CPU machine
#   ID=cifar100 PRESET=cpu_pretrained OUT=runs/c100 bash scripts/reproduce_small.sh   # CIFAR-100 as ID
#   -> runs/reproduce_small/RESULTS.md
#
# PRESET names configs/reproduce_<PRESET>.env, which sets the model, sizes, steps and training
# flags of that kind of machine (the reasons for its values are in the file); any variable set in
# the environment wins over the preset.
#
# Stages (each timed into $OUT/stage_times.json): pretrain (only when PRETRAINED names an npz that does
# not exist and PRETRAIN_WHEN_MISSING=1: scripts/pretrain.sh writes it, its training run in
# $OUT/runs/pretrain/tin) -> data (unpack the shared archives into an ignored folder) -> from_run (only
# with FROM_RUN, in place of train_cls and make_cam) -> train_cls (train.py --task cls) -> make_cam
# (pseudo masks of the training split) -> eval_cls (eval.py on the classifier) -> per DFB seed s:
# train_dfb_seed<s> (train.py --task dfb into $OUT/runs/dfb_seed<s>) and eval_dfb_seed<s> (into
# $OUT/results_dfb_seed<s>) -> per ablation <name>: train_dfb_<name>, eval_dfb_<name> (first seed);
# reporting/results_report.py names each of them. The report is rewritten after each DFB
# evaluation, so the first seed's report is there before the other seeds and ablations finish.
# Rerunning after an interruption resumes: finished stages are skipped ($OUT/.stages/<stage>.done;
# delete one to redo that stage), training resumes from its checkpoint, make_cam skips masks
# already written, eval.py reuses its feature cache. SEEDS may grow between invocations (the new
# seeds run, the finished ones are kept); other settings that change results may not.
#
# NOT the paper's setting. The paper fine-tunes a pretrained BiT-M-R50x1 at 128 px for 10,000
# steps (the release starts from BiT-M-R50x1-ILSVRC2012.npz); no weights can be downloaded here, so
# this run trains FROM SCRATCH (PRETRAINED=none), shorter and at 64 px (with BiT-M-R50x1 its last
# feature map, and so every CAM and dense mask at scale 1, is then 2x2 instead of the paper's 4x4;
# ResNetV2-Tiny of the cpu preset keeps 4x4). Expect a lower ID accuracy and
# different OOD numbers; the OOD sets are stand-ins (datasets/shared_archives.py says for what).
#
# Environment (defaults in brackets; "preset" = from configs/reproduce_<PRESET>.env):
#   PRESET           gpu, cpu or cpu_pretrained [gpu]
#   ID               the ID set: cifar10 or cifar100 (train and test splits of its shared archive) [cifar10]
#   SHARED_DATA      the shared archives, .tar or .tar.gz [../shared/data beside the checkout]
#   PYTHON           interpreter with the requirements installed [.venv/bin/python, made by scripts/setup_env.sh]
#   OUT              run folder [runs/reproduce_small]
#   DATA_DIR         unpacked sets [dataset/reproduce_small/<sizes>; cifar100_<sizes> with ID=cifar100]
#   OOD_SETS         those whose archive exists [OpenOOD v1.5's CIFAR composition, as `unpack_shared_data.py
#                    --default_ood --id $ID` prints it from datasets/shared_archives.py: near-OOD the other CIFAR
#                    and TinyImageNet, far-OOD MNIST, SVHN, Textures and MiniPlaces; Scene15 and IntelScenes only
#                    when named]
#   TRAIN_PER_CLASS / TEST_PER_CLASS / OOD_PER_CLASS   first N images per class [empty: all]
#   SEED             seed of the classifier and its evaluation [0]
#   SEEDS            seeds of the DFB stage, space-separated [$SEED]; classifier and masks are shared
#   FROM_RUN         start at the DFB stage with the classifier and pseudo masks of an earlier run: its
#                    OUT folder, or an archive of one (e.g. ../shared/runs/cifar10_cpu_classifier_and_masks.tar.gz,
#                    any folder depth inside). They are copied into $OUT, train_cls and make_cam are marked
#                    done, and the run's data must be the images that classifier trained on [empty]
#   FUSION [logit]  KNN_K [50]
#   FUSION_VAL_OOD   one set of OOD_SETS kept as the validation OOD set (eval.py --fusion_val_ood): the DFB
#                    fusions and the background's direction are chosen on it instead of on patch-shuffled
#                    held-out images, and it is left out of every evaluation and table [empty]
#   TTA              eval.py --tta of every evaluation: none, flip (each image's logits and pooled features
#                    are the mean over the image and its mirror, for the ID, OOD and validation images alike;
#                    docs/CIFAR_RECIPE.md §3.3) or flip_translate (airbench's six views, §11) [preset, else none]
#   STOP_AFTER       data, train_cls, make_cam or eval_cls: leave after that stage (bench/time_to_accuracy.py
#                    times the classifier stage so); a rerun without it goes on from there [empty]
#   PRETRAIN_WHEN_MISSING  1: when PRETRAINED names an npz that does not exist, scripts/pretrain.sh writes it
#                    first (stage pretrain, Tiny ImageNet of the shared folder) [preset, else 0]
#   PRETRAIN_<NAME>  pretrain.sh's variable NAME for that stage, one of PRETRAIN_VARS below (e.g. PRETRAIN_STEPS,
#                    PRETRAIN_PER_CLASS, PRETRAIN_DATA_DIR) [empty: pretrain.sh's default]; the stage also gets
#                    this run's MODEL, DEVICE, WORKERS and SHARED_DATA, NPZ=$PRETRAINED and OUT=$OUT/runs/pretrain
#   preset: MODEL PRETRAINED RESOLUTION TRAIN_RESIZE BATCH STEPS_CLS STEPS_DFB BASE_LR DEVICE WORKERS
#           CAM_BATCH EVAL_BATCH
#   TRAIN_PAD        the classifier's crop: non-empty, train.py --train_pad TRAIN_PAD (a translation by reflection
#                    padding) instead of --train_resize TRAIN_RESIZE, which the DFB stage keeps [preset, else empty]
#   CLS_FLAGS        extra train.py flags of the classifier [preset]
#   CAM_FLAGS        extra make_cam.py flags [preset]
#   DFB_FLAGS        extra train.py flags of the DFB stage [preset]; @CLS_CKPT is replaced by the
#                    classifier checkpoint (e.g. --init_from @CLS_CKPT). Flags are split on spaces.
#   DFB_ABLATIONS    DFB variants, one per line "name|flags" [preset, empty]: each is trained with the
#                    first seed into $OUT/runs/dfb_<name> with ITS flags instead of DFB_FLAGS (give the
#                    full set; @CLS_CKPT works too) and evaluated into $OUT/results_dfb_<name>
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/shared_data.sh  # PY (PYTHON, else the project's .venv) and find_shared_data

PRESET=${PRESET:-gpu}
PRESET_FILE=configs/reproduce_$PRESET.env
if [ ! -f "$PRESET_FILE" ]; then
  echo "[error] PRESET=$PRESET: no $PRESET_FILE (presets: $(ls configs/reproduce_*.env | sed 's/.*reproduce_//; s/\.env$//' | tr '\n' ' '))" >&2
  exit 2
fi
# shellcheck source=configs/reproduce_gpu.env
source "$PRESET_FILE"

TRAIN_PAD=${TRAIN_PAD:-}
STOP_AFTER=${STOP_AFTER:-}
case "$STOP_AFTER" in
  ""|data|train_cls|make_cam|eval_cls) ;;
  *) echo "[error] STOP_AFTER=$STOP_AFTER: expected data, train_cls, make_cam or eval_cls" >&2; exit 2 ;;
esac
TTA=${TTA:-none}
case "$TTA" in  # before any work: eval.py would refuse it only after the training stages
  none|flip|flip_translate) ;;
  *) echo "[error] TTA=$TTA: expected none, flip or flip_translate (eval.py --tta)" >&2; exit 2 ;;
esac
SHARED_DATA=$(find_shared_data)
OUT=${OUT:-runs/reproduce_small}  # runs/ is git-ignored
ID=${ID:-cifar10}
case "$ID" in
  cifar10) DATA_PREFIX= ;;
  cifar100) DATA_PREFIX=cifar100_ ;;
  *) echo "[error] ID=$ID: expected cifar10 or cifar100" >&2; exit 2 ;;
esac
if [ -z "${OOD_SETS:-}" ]; then OOD_SETS=$($PY unpack_shared_data.py --default_ood --id "$ID"); fi
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-}
TEST_PER_CLASS=${TEST_PER_CLASS:-}
OOD_PER_CLASS=${OOD_PER_CLASS:-}
# dataset/* is git-ignored; one folder per subsampling so a tiny test never mixes with the full sets
SIZES=train${TRAIN_PER_CLASS:-all}_test${TEST_PER_CLASS:-all}_ood${OOD_PER_CLASS:-all}
# (a folder per ID set too: CIFAR-100's folder holds CIFAR10/, CIFAR-10's CIFAR100/, never both)
DATA_DIR=${DATA_DIR:-dataset/reproduce_small/$DATA_PREFIX$SIZES}
SEED=${SEED:-0}
SEEDS=${SEEDS:-$SEED}
FUSION=${FUSION:-logit}
KNN_K=${KNN_K:-50}
FUSION_VAL_OOD=${FUSION_VAL_OOD:-}
if [ -n "$FUSION_VAL_OOD" ] && [[ " $OOD_SETS " != *" $FUSION_VAL_OOD "* ]]; then
  echo "[error] FUSION_VAL_OOD=$FUSION_VAL_OOD is not one of OOD_SETS ($OOD_SETS)" >&2
  exit 2
fi
FROM_RUN=${FROM_RUN:-}
PRETRAIN_WHEN_MISSING=${PRETRAIN_WHEN_MISSING:-0}
# scripts/pretrain.sh's own settings, given to it as PRETRAIN_<name> (its names would clash with this run's)
PRETRAIN_VARS=(DATA_DIR RESOLUTION TRAIN_RESIZE BATCH STEPS BASE_LR SEED PER_CLASS FLAGS)
for name in "${PRETRAIN_VARS[@]/#/PRETRAIN_}"; do declare "$name=${!name:-}"; done
SETTINGS=(PRESET ID FROM_RUN PRETRAIN_WHEN_MISSING "${PRETRAIN_VARS[@]/#/PRETRAIN_}" SHARED_DATA OUT OOD_SETS
          TRAIN_PER_CLASS TEST_PER_CLASS OOD_PER_CLASS DATA_DIR MODEL PRETRAINED RESOLUTION TRAIN_RESIZE TRAIN_PAD BATCH
          STEPS_CLS STEPS_DFB BASE_LR SEED SEEDS DEVICE WORKERS CAM_BATCH EVAL_BATCH FUSION FUSION_VAL_OOD KNN_K TTA
          CLS_FLAGS CAM_FLAGS DFB_FLAGS DFB_ABLATIONS)

read -r -a SEED_LIST <<< "$SEEDS"
[ "${#SEED_LIST[@]}" -gt 0 ] || { echo "[error] SEEDS is empty" >&2; exit 2; }
for s in "${SEED_LIST[@]}"; do
  [[ "$s" =~ ^[0-9]+$ ]] || { echo "[error] SEEDS: '$s' is not a non-negative integer" >&2; exit 2; }
done
ABLATION_NAMES=() ABLATION_FLAGS=()
while IFS= read -r line; do
  [ -n "${line//[[:space:]]/}" ] || continue
  name=${line%%|*}
  name=${name//[[:space:]]/}
  # seed<n> would share a folder with a seed's run; the report reads the names back from the folders
  if [[ "$line" != *"|"* || ! "$name" =~ ^[A-Za-z0-9_-]+$ || "$name" =~ ^seed[0-9]*$ ]]; then
    echo "[error] DFB_ABLATIONS: expected lines 'name|flags' with a name of letters, digits, _ or - (not seed<n>); got '$line'" >&2
    exit 2
  fi
  ABLATION_NAMES+=("$name")
  ABLATION_FLAGS+=("${line#*|}")
done <<< "$DFB_ABLATIONS"

mkdir -p "$OUT/.stages"
ID_DIR="$DATA_DIR/$ID"
CLS_CKPT="$OUT/cls_pretrained_models/classifier.pth.tar"
MASKS="$OUT/masks/train"  # beside the run, not the data: masks belong to this run's classifier

timed() {  # timed <stage> <command...>: its wall time is added to stage_times.json however it ends
  local stage=$1 started status=0
  shift
  echo "== $stage"
  started=$(date +%s.%N)
  # In a || list set -e is off inside the command: the functions below return their own failures
  "$@" || status=$?
  $PY -m reporting.run_record time --file "$OUT/stage_times.json" --stage "$stage" --started "$started"
  [ "$status" -eq 0 ] || { echo "[error] stage $stage failed (exit $status); rerun to resume" >&2; exit "$status"; }
}

run_stage() {  # run_stage <stage> <command...>: timed, and skipped once it has succeeded
  if [ -f "$OUT/.stages/$1.done" ]; then
    echo "== $1: done in an earlier run, skipped"
    stop_if_asked "$1"
    return 0
  fi
  timed "$@"
  touch "$OUT/.stages/$1.done"
  stop_if_asked "$1"
}

stop_if_asked() {  # stop_if_asked <stage>: leave the script after STOP_AFTER
  if [ "$1" = "$STOP_AFTER" ]; then
    echo "== stopped after $1 (STOP_AFTER); rerun without STOP_AFTER to go on"
    exit 0
  fi
}

unpack_data() {  # OOD_SETS unquoted on purpose: one argument per set
  $PY unpack_shared_data.py --shared "$SHARED_DATA" --out "$DATA_DIR" --id "$ID" --ood $OOD_SETS \
    --train_per_class "$TRAIN_PER_CLASS" --test_per_class "$TEST_PER_CLASS" --ood_per_class "$OOD_PER_CLASS" \
    > "$OUT/ood_splits.txt" && cp "$DATA_DIR/manifest.json" "$OUT/data_manifest.json"
}

TRAIN_FLAGS=(--datadir "$ID_DIR/train" --test_datadir "$ID_DIR/test" --model "$MODEL" --pretrained "$PRETRAINED"
             --base_lr "$BASE_LR" --resolution "$RESOLUTION" --batch "$BATCH"
             --device "$DEVICE" --workers "$WORKERS" --logdir "$OUT/runs" --eval_every 0)
if [ -n "$TRAIN_PAD" ]; then CLS_CROP=(--train_pad "$TRAIN_PAD"); else CLS_CROP=(--train_resize "$TRAIN_RESIZE"); fi

evaluate() {  # evaluate <checkpoint> <result folder> <seed> [dfb]
  local split splits ood=() validation=()
  mapfile -t splits < "$OUT/ood_splits.txt" || return
  for split in "${splits[@]}"; do
    if [ -n "$FUSION_VAL_OOD" ] && [ "$(basename "$(dirname "$split")")" = "$FUSION_VAL_OOD" ]; then
      [ "${4:-}" = dfb ] && validation=(--fusion_val_ood "$split")
    else
      ood+=("$split")
    fi
  done
  $PY eval.py --model_path "$1" --id_train_path "$ID_DIR/train" --id_test_path "$ID_DIR/test" --ood_path "${ood[@]}" \
    --logdir "$2" --device "$DEVICE" --workers "$WORKERS" --batch "$EVAL_BATCH" --fusion "$FUSION" \
    --knn_k "$KNN_K" --tta "$TTA" --seed "$3" "${validation[@]}"
}

report() {
  echo "== report"
  $PY -m reporting.results_report --run_dir "$OUT" --fusion "$FUSION"
}

dfb_variant() {  # dfb_variant <suffix> <seed> <extra flags>: train, evaluate and report one DFB network
  local suffix=$1 seed=$2 flags
  # word splitting on purpose: one argument per flag; @CLS_CKPT is known only here
  read -r -a flags <<< "${3//@CLS_CKPT/$CLS_CKPT}"
  run_stage "train_dfb_$suffix" $PY train.py --task dfb --name "dfb_$suffix" --steps "$STEPS_DFB" \
    --mask_dir "$MASKS" --seed "$seed" "${TRAIN_FLAGS[@]}" --train_resize "$TRAIN_RESIZE" "${flags[@]}"
  run_stage "eval_dfb_$suffix" evaluate "$OUT/runs/dfb_$suffix/checkpoint.pth.tar" "$OUT/results_dfb_$suffix" "$seed" dfb
  report
}

import_stages() {  # the classifier and masks of FROM_RUN, copied into $OUT in place of train_cls and make_cam
  local source=$FROM_RUN unpacked="$OUT/.from_run" found
  if [ -f "$source" ]; then
    rm -rf "$unpacked" && mkdir -p "$unpacked" && tar -xzf "$source" -C "$unpacked" || {
      echo "[error] FROM_RUN=$source: not a readable .tar.gz archive of a run" >&2; return 2; }
    source=$unpacked
  fi
  found=$(find "$source" -path "*/cls_pretrained_models/classifier.pth.tar" 2>/dev/null | head -n 1)
  if [ -z "$found" ] || [ ! -f "$(dirname "$(dirname "$found")")/masks/train/provenance.json" ]; then
    echo "[error] FROM_RUN=$FROM_RUN: expected an earlier OUT folder of this script (or an archive of one) with" \
         "cls_pretrained_models/classifier.pth.tar and a finished masks/train/ (provenance.json)" >&2
    return 2
  fi
  source=$(dirname "$(dirname "$found")")
  mkdir -p "$OUT/cls_pretrained_models" "$OUT/masks" "$OUT/runs/cls"
  cp "$found" "$CLS_CKPT.tmp" && mv "$CLS_CKPT.tmp" "$CLS_CKPT"
  rm -rf "$MASKS" "$MASKS.tmp" && cp -r "$source/masks/train" "$MASKS.tmp" && mv "$MASKS.tmp" "$MASKS"
  if [ -f "$source/runs/cls/final_metrics.json" ]; then cp "$source/runs/cls/final_metrics.json" "$OUT/runs/cls/"; fi
  rm -rf "$unpacked"
  touch "$OUT/.stages/train_cls.done" "$OUT/.stages/make_cam.done"
  echo "[from_run] classifier and masks of $source copied into $OUT"
}

start=$(date +%s)
settings=()
for name in "${SETTINGS[@]}"; do settings+=(--setting "$name=${!name}"); done
$PY -m reporting.run_record info --file "$OUT/run_info.json" --device "$DEVICE" "${settings[@]}"
if [ "$PRETRAINED" != none ] && [ ! -f "$PRETRAINED" ]; then  # before any work: the weights come first
  if [ "$PRETRAIN_WHEN_MISSING" != 1 ]; then
    echo "[error] PRETRAINED=$PRETRAINED does not exist: write it with NPZ=$PRETRAINED bash scripts/pretrain.sh," \
         "or set PRETRAIN_WHEN_MISSING=1, or PRETRAINED=none to train from scratch" >&2
    exit 2
  fi
  pretrain_env=(NPZ="$PRETRAINED" SHARED_DATA="$SHARED_DATA" DEVICE="$DEVICE" WORKERS="$WORKERS" MODEL="$MODEL"
                OUT="$OUT/runs/pretrain")
  for name in "${PRETRAIN_VARS[@]}"; do value=PRETRAIN_$name; pretrain_env+=("$name=${!value}"); done
  timed pretrain env "${pretrain_env[@]}" bash scripts/pretrain.sh
fi
# Always run (sets already unpacked are kept), so ood_splits.txt follows OOD_SETS
timed data unpack_data
stop_if_asked data

if [ -n "$FROM_RUN" ]; then run_stage from_run import_stages; fi
read -r -a cls_flags <<< "$CLS_FLAGS"
read -r -a cam_flags <<< "$CAM_FLAGS"
run_stage train_cls $PY train.py --task cls --name cls --steps "$STEPS_CLS" --export "$CLS_CKPT" --seed "$SEED" \
  "${TRAIN_FLAGS[@]}" "${CLS_CROP[@]}" "${cls_flags[@]}"
run_stage make_cam $PY make_cam.py --dataset="$ID_DIR/train" --model_path="$CLS_CKPT" \
  --head_size="$(find "$ID_DIR/train" -mindepth 1 -maxdepth 1 -type d | wc -l | tr -d ' ')" --out "$MASKS" \
  --batch "$CAM_BATCH" --device "$DEVICE" --workers "$WORKERS" "${cam_flags[@]}"
run_stage eval_cls evaluate "$CLS_CKPT" "$OUT/results_cls" "$SEED"
for s in "${SEED_LIST[@]}"; do
  dfb_variant "seed$s" "$s" "$DFB_FLAGS"
done
for i in "${!ABLATION_NAMES[@]}"; do
  dfb_variant "${ABLATION_NAMES[$i]}" "${SEED_LIST[0]}" "${ABLATION_FLAGS[$i]}"
done

echo "== done in $(( $(date +%s) - start )) s (this invocation): $OUT/RESULTS.md"
echo "After a GPU run, publish the report and its figures with:"
echo "  $PY -m reporting.results_report --run_dir $OUT --fusion $FUSION --out docs/RESULTS.md \\"
echo "      --figures_to docs/results_figures"

# Shared settings of the shell scripts; every value can be overridden from the environment.
#   DATA_ROOT   data sets (ImageFolder)                 default: dataset
#   DATASETS    ID data sets to run                     default: "cifar10 cifar100"
#   OOD_SETS    OOD folders under DATA_ROOT             default: "SVHN Places Textures" (+ the other CIFAR)
#   MODEL       BiT model                               default: BiT-M-R50x1
#   PRETRAINED  BiT .npz, or none                       default: pretrained/$MODEL-ILSVRC2012.npz
#               (ImageNet-21k then ImageNet-1k fine-tuned: the file the release's train.py loads;
#               the plain pretrained/$MODEL.npz works too)
#   STEPS BATCH RESOLUTION DEVICE WORKERS               train.py / eval.py flags (empty: their defaults)
#   LOGDIR      training runs                           default: runs
#   RESULTS     evaluation results                      default: results
#   CLS_DIR     exported classifiers                    default: cls_pretrained_models
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA_ROOT=${DATA_ROOT:-dataset}
DATASETS=${DATASETS:-cifar10 cifar100}
OOD_SETS=${OOD_SETS:-SVHN Places Textures}
MODEL=${MODEL:-BiT-M-R50x1}
PRETRAINED=${PRETRAINED:-pretrained/$MODEL-ILSVRC2012.npz}
LOGDIR=${LOGDIR:-runs}
RESULTS=${RESULTS:-results}
CLS_DIR=${CLS_DIR:-cls_pretrained_models}
STEPS=${STEPS:-}
BATCH=${BATCH:-}
RESOLUTION=${RESOLUTION:-}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-4}

# Flags shared by train.py and eval.py, only those the user set.
common_flags() {
  local flags=(--device "$DEVICE" --workers "$WORKERS")
  [ -n "$BATCH" ] && flags+=(--batch "$BATCH")
  [ -n "$RESOLUTION" ] && flags+=(--resolution "$RESOLUTION")
  echo "${flags[@]}"
}

run_train() {  # run_train <dataset> <task> <run name> [extra train.py flags...]
  local ds=$1 task=$2 name=$3
  shift 3
  "$PYTHON" train.py --task "$task" --datadir "$DATA_ROOT/$ds/train" --test_datadir "$DATA_ROOT/$ds/test" \
    --model "$MODEL" --pretrained "$PRETRAINED" --logdir "$LOGDIR" --name "$name" \
    ${STEPS:+--steps "$STEPS"} $(common_flags) "$@"
}

fail() { echo "[error] $*" >&2; exit 1; }

require_split() {  # require_split <folder> <what to do if missing>
  [ -d "$1" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ] || fail "$1 is missing or empty. $2"
}

require_id_data() {  # require_id_data <dataset>: its train and test splits
  local split
  for split in train test; do
    require_split "$DATA_ROOT/$1/$split" "Prepare it with: $PYTHON prepare_data.py --root $DATA_ROOT --datasets $1"
  done
}

require_weights() {
  if [ "$PRETRAINED" != none ] && [ ! -f "$PRETRAINED" ]; then
    fail "BiT weights $PRETRAINED not found. Download them:
  mkdir -p $(dirname "$PRETRAINED") && wget -O $PRETRAINED https://storage.googleapis.com/bit_models/$(basename "$PRETRAINED")
(files are named <model>.npz or <model>-ILSVRC2012.npz there; or set PRETRAINED=none to train from scratch)"
  fi
}

other_cifar() { case "$1" in cifar10) echo cifar100 ;; cifar100) echo cifar10 ;; *) echo "" ;; esac; }

num_classes() { find "$DATA_ROOT/$1/train" -mindepth 1 -maxdepth 1 -type d | wc -l | tr -d ' '; }

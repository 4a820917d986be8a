#!/usr/bin/env bash
# One lease of a GPU machine, in one command (at most ~9.5 minutes of the card):
#   1. environment and the CUDA-only tests,
#   2. the speed benchmark against the official-style loop (bench.benchmark --preset gpu-full),
#   3. scripts/reproduce_small.sh with the CPU preset's recipe on the GPU (the same experiment as
#      PRESET=cpu on a 2-core machine, so the two runs compare directly): seed 0 first, then the
#      extra DFB seeds, then the DFB ablations, each step only while time is left,
#   4. a validation-only check of the classifier's learning rate (held-out training images),
#   5. everything small enough to copy back, under $RESULTS_DIR.
# Every step has its own time limit and the later steps run even if an earlier one failed, so a
# CUDA-only bug costs one step, not the lease.
#
#   SHARED_DATA=shared_gz PYTHON=python3 bash scripts/gpu_session.sh
#
# Environment: RESULTS_DIR (where the logs and the report go) [gpu_session_out], BUDGET_S (seconds
# for the whole script) [560], SHARED_DATA, PYTHON as for reproduce_small.sh, SWEEP (classifier
# variants "name|extra train.py flags", one per line, compared on held-out training images),
# RUN_DIR [runs/gpu_session], BENCH_ARGS / BENCH_COMPILE_ARGS (the two benchmark runs), plus any reproduce_small.sh variable (e.g. STEPS_CLS for a tiny test).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
BUDGET_S=${BUDGET_S:-560}
RESULTS_DIR=${RESULTS_DIR:-gpu_session_out}
RUN_DIR=${RUN_DIR:-runs/gpu_session}
PY=${PYTHON:-.venv/bin/python}
# Classifier variants compared on held-out training images with the preset's (later flags win)
SWEEP=${SWEEP:-"lr0.05|--base_lr 0.05
lr0.2|--base_lr 0.2
no_mixup|--mixup 0"}
# torch.compile of BiT takes minutes to build: measured last, only if time is left
BENCH_ARGS=${BENCH_ARGS:---preset gpu-full --no-compile}
BENCH_COMPILE_ARGS=${BENCH_COMPILE_ARGS:---preset gpu-full --compile --no-channels_last --repeats 2}
mkdir -p "$RESULTS_DIR"
LOG="$RESULTS_DIR/session.log"

left() { echo $(( BUDGET_S - ($(date +%s) - started) )); }
step() {  # step <name> <max seconds> <command...>: logged, time-limited, never fatal
  local name=$1 limit=$2 status=0
  shift 2
  local remaining
  remaining=$(left)
  (( limit > remaining - 15 )) && limit=$(( remaining - 15 ))
  if (( limit < 20 )); then
    echo "== $name: skipped, $remaining s left" | tee -a "$LOG"
    return 1
  fi
  echo "== $name (limit ${limit}s, $(left) s left)" | tee -a "$LOG"
  # bash -c so that the exported functions below can be time-limited too
  timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > >(tee -a "$LOG") 2>&1 || status=$?
  echo "== $name: exit $status after $(( $(date +%s) - started )) s of the session" | tee -a "$LOG"
  return "$status"
}

environment() {
  nvidia-smi -L || true
  $PY - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("torchvision", "numpy", "scipy", "sklearn", "cv2", "matplotlib", "tqdm", "PIL", "tensorboard"):
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", "?"))
EOF
}

# The reproduce run: the CPU preset's recipe and sizes, on the GPU.
export PRESET=${PRESET:-cpu} DEVICE=${DEVICE:-cuda} WORKERS=${WORKERS:-12} CAM_BATCH=${CAM_BATCH:-512}
export EVAL_BATCH=${EVAL_BATCH:-1024} OUT=$RUN_DIR PYTHON=$PY
reproduce() { SEEDS="$1" DFB_ABLATIONS="$2" bash scripts/reproduce_small.sh; }
# The preset's DFB stage is "initialised from the classifier + image-level loss"; the ablations
# take away one or both (a 2x2 design with the final recipe).
RECIPE="--schedule cosine --weight_decay 5e-4 --nesterov --label_smoothing 0.1"
ABLATIONS=${GPU_ABLATIONS:-"no_init|$RECIPE --image_loss_weight 1
no_image_loss|$RECIPE --init_from @CLS_CKPT
neither|$RECIPE"}

sweep() {  # the classifier with other settings, judged on its held-out training images only
  local data line name extra
  # the folder reproduce_small.sh unpacked CIFAR-10 into
  data=${DATA_DIR:-dataset/reproduce_small/train${TRAIN_PER_CLASS:-all}_test${TEST_PER_CLASS:-all}_ood${OOD_PER_CLASS:-all}}/cifar10
  source configs/reproduce_cpu.env
  read -r -a flags <<< "$CLS_FLAGS"
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    name=${line%%|*} extra=${line#*|}
    read -r -a extra <<< "$extra"
    $PY train.py --task cls --datadir "$data/train" --name "$name" --logdir "$RUN_DIR/sweep" \
      --model "$MODEL" --pretrained none --resolution "$RESOLUTION" --train_resize "$TRAIN_RESIZE" \
      --batch "$BATCH" --steps "$STEPS_CLS" --base_lr "$BASE_LR" --device "$DEVICE" --workers "$WORKERS" \
      --eval_every 0 "${flags[@]}" "${extra[@]}" || return
  done <<< "$SWEEP"
  $PY - "$RUN_DIR" <<'EOF'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
rows = [("preset (the reproduce run's classifier)", run / "runs/cls/final_metrics.json")]
rows += [(p.parent.name, p) for p in sorted((run / "sweep").glob("*/final_metrics.json"))]
print("| classifier run | val_top1 (held-out training images) |")
print("|---|---|")
for name, path in rows:
    if path.is_file():
        print(f"| {name} | {json.loads(path.read_text()).get('val_top1', float('nan')):.4f} |")
EOF
}

collect() {  # what comes back: logs, the report, settings, metrics, results, figures, logits
  cp "$RUN_DIR/RESULTS.md" "$RESULTS_DIR/" 2>/dev/null
  tar czf "$RESULTS_DIR/run.tgz" --exclude='cache' --exclude='*.pth.tar' --exclude='masks' \
    --exclude='tensorboard' --exclude='logits' --exclude='scores' "$RUN_DIR" 2>/dev/null
  # logits of the scored sets (the training split's are large and only fit the scores)
  find "$RUN_DIR" -path '*/logits/*.npy' ! -name '*_train.npy' -print0 | tar czf "$RESULTS_DIR/logits.tgz" --null -T - 2>/dev/null
  ls -la "$RESULTS_DIR"
}

export PY RUN_DIR SWEEP
export -f environment reproduce sweep
step environment 60 environment
step cuda_tests 90 $PY -m pytest -q -x tests/test_augment.py -p no:cacheprovider
step benchmark 170 $PY -m bench.benchmark $BENCH_ARGS --json "$RESULTS_DIR/benchmark.json"
step reproduce_seed0 300 reproduce "0" ""
step reproduce_seeds 150 reproduce "0 1 2" ""
step reproduce_ablations 150 reproduce "0 1 2" "$ABLATIONS"
step validation_sweep 150 sweep
step benchmark_compile 200 $PY -m bench.benchmark $BENCH_COMPILE_ARGS --json "$RESULTS_DIR/benchmark_compile.json"
collect
echo "== session done in $(( $(date +%s) - started )) s" | tee -a "$LOG"

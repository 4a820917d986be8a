#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install requirements.txt.
# Usage: bash scripts/setup_env.sh            (VENV=path to choose another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "[setup] installing requirements.txt into $VENV (first time: several minutes)"
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -c "import torch, torchvision, cv2, sklearn; print('[setup] ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"

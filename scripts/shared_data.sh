# Sourced by the scripts that read the shared real image sets, from the checkout's root. Sets PY: PYTHON, an
# interpreter that already has the requirements (e.g. python3 on a machine without internet, where
# scripts/setup_env.sh cannot install them), else the project's .venv, made first when missing.
# find_shared_data prints the folder of the shared archives, SHARED_DATA when set, else ../shared/data
# (beside the checkout; relative, so run records name no machine's paths); without either it stops with
# a message that names SHARED_DATA.
find_shared_data() {
  local beside=../shared/data
  if [ -n "${SHARED_DATA:-}" ]; then
    [ -d "$SHARED_DATA" ] || { echo "[error] SHARED_DATA=$SHARED_DATA is not a folder" >&2; return 2; }
    echo "$SHARED_DATA"
  elif [ -d "$beside" ]; then
    echo "$beside"
  else
    echo "[error] no shared data folder: set SHARED_DATA to the folder holding the shared archives" \
         "(cifar10.tar, ...); looked for $beside" >&2
    return 2
  fi
}

if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || bash scripts/setup_env.sh
fi
PY=${PYTHON:-.venv/bin/python}

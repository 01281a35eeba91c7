#!/usr/bin/env bash
# Idempotent set-up shared by start.sh and test.sh:
#   .venv with the pinned requirements (reinstalled only when a requirements file changes),
#   the demo model when models/ holds none, and with --dev the test requirements and Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
files="requirements.txt"
# The tests cover the llama.cpp loader too: its optional requirements come with --dev (the first
# install compiles llama.cpp, ~13 minutes on 2 cores; pip caches the wheel for every later run).
[ "$dev" = 1 ] && files="$files requirements-dev.txt requirements-gguf.txt"
stamp=".venv/.parlour-$(cat $files | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing $files (pinned; torch is the local CPU wheel)"
  args=""
  for f in $files; do args="$args -r $f"; done
  .venv/bin/python -m pip install -q --disable-pip-version-check $args 2>&1 | grep -v "is ignored: it is neither" || true
  # pip's exit status is lost in the pipe above; check the environment really is complete.
  .venv/bin/python -c "import torch, transformers, gradio, yaml" 
  touch "$stamp"
fi

if [ "$dev" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "[setup] installing Chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi

# The SillyTavern tests install SillyTavern itself from the npm registry (tests/sillytavern.py, once,
# into ~/.cache/parlour/sillytavern); they need Node.js 18 or later and npm.
if [ "$dev" = 1 ] && ! { command -v node >/dev/null && command -v npm >/dev/null; }; then
  echo "[setup] installing Node.js and npm for the SillyTavern tests"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
fi
if [ "$dev" = 1 ]; then
  echo "[setup] SillyTavern for the tests (installed once from the npm registry)"
  .venv/bin/python -c "import sys; sys.path.insert(0, '.'); from tests.sillytavern import install; install()" \
    || echo "[setup] SillyTavern could not be installed now; its tests will try again (and say why)"
fi

# Parlour's own modules byte-compiled (only what changed since the last run is compiled again). Python
# writes these caches itself on import, except where PYTHONDONTWRITEBYTECODE is set (many container images,
# this project's build machines): there every start compiled all of Parlour from source again (~0.35 s of a
# start on 2 cores, py-spy). Existing caches are read whatever that variable says.
.venv/bin/python -m compileall -q -j 0 modules extensions >/dev/null || echo "[setup] could not byte-compile modules/ (Parlour still runs)"

# The demo model, when there is no model at all (built once, a few minutes, with a progress bar). A
# symbolic link in models/ is not a model Parlour loads (it does not follow links), so it does not count.
models_dir=${PARLOUR_MODELS_DIR:-models}
if [ -z "$(find "$models_dir" -mindepth 1 -maxdepth 2 \( -name config.json -o -name '*.gguf' \) -not -type l \
      2>/dev/null | head -n 1)" ]; then
  echo "[setup] $models_dir/ holds no model: building the demo model (a few minutes, once)"
  .venv/bin/python -m modules.demo_model --models-dir "$models_dir" \
    --cache "${PARLOUR_MODEL_CACHE:-$HOME/.cache/parlour/models}"
fi

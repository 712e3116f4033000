#!/usr/bin/env bash
# Create .venv (if missing) and install mmdata with its test extras. Torch is installed FIRST and
# pinned: an unpinned torch can pull a multi-GB CUDA build. Override with TORCH_SPEC=... if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC" >&2
  # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU wheel where the default index would pull CUDA.
  .venv/bin/python -m pip install -q "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
echo "[setup] installing mmdata[dev] (editable)" >&2
log=$(mktemp)
if ! .venv/bin/python -m pip install -q -e ".[dev]" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; echo "[setup] pip install failed" >&2; exit 1
fi
rm -f "$log"
.venv/bin/python -c "import mmdata, mmtrain, torch; print(f'[setup] ok: mmdata {mmdata.__version__}, torch {torch.__version__}')" >&2
echo "[setup] the commands are in .venv/bin: run 'source .venv/bin/activate' to put mmdata and mmtrain on your PATH" >&2

#!/usr/bin/env bash
# Set up a virtual environment in .venv with the CPU build of PyTorch and phasedlstm.
#
# torch is installed first, pinned to the CPU wheel (2.13.0), so that the package's
# plain `torch>=2.4` requirement is already met and pip never pulls a multi-GB CUDA build.
# Idempotent: a second run only re-installs phasedlstm in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==2.13.0"
fi
.venv/bin/pip install --quiet -e ".[dev,baselines,export,tensorboard,hub]"
.venv/bin/python -c "import torch, phasedlstm; print(f'phasedlstm {phasedlstm.__version__} with torch {torch.__version__} ready in .venv')"

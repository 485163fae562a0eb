#!/usr/bin/env bash
# The main job on the embedded default: install, create a local curator key (first run only), import
# and sign the default corpus, ingest it and the must-be-refused examples, print the summary, ask one
# question as a smoke check, then serve the API (RAG_HOST / RAG_PORT; RAG_NO_SERVE=1 stops before serving).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-venv.sh
data=${RAG_DATA_DIR:-.rag}
if [ ! -f "$data/keys/local-curator.key" ]; then
  rag keys new local-curator --out "$data/keys" --trust "$data/trust.local.json"
fi
rag import pydoc --out "$data/corpus/pydoc" --key "$data/keys/local-curator.key"
rag ingest "$data/corpus/pydoc"
echo "--- the examples below must all be refused, each with its reason ---"
if rag ingest knowledge_base/examples/rejected; then
  echo "error: an example that must be refused was admitted" >&2; exit 1
fi
rag ledger verify
rag documents | tail -n 5
echo "--- one question through the whole pipeline ---"
rag ask "What does the pass statement do when it is executed?"
if [ "${RAG_NO_SERVE:-0}" != "1" ]; then
  exec rag serve --host "${RAG_HOST:-127.0.0.1}" --port "${RAG_PORT:-8000}"
fi

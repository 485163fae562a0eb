#!/usr/bin/env bash
# The main job on the embedded default: install, create a local curator key (first run only), import
# and sign the default corpus, ingest it and the must-be-refused examples, print the summary, ask one
# question as a smoke check, then serve the API (RAG_HOST / RAG_PORT; RAG_NO_SERVE=1 stops before serving).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-venv.sh
data=${RAG_DATA_DIR:-.rag}
# Keys and the local trust file live in the operator's folder beside the ledger key, outside the data dir.
conf=$(dirname "${RAG_LEDGER_KEY_PATH:-$HOME/.config/provenance-first-rag/ledger.key}")
if [ -f "$data/keys/local-curator.key" ] && [ ! -f "$conf/keys/local-curator.key" ]; then
  mkdir -p "$conf/keys"  # from a checkout that kept them in the data dir: move them out once
  mv "$data/keys/local-curator.key" "$data/keys/local-curator.pub" "$conf/keys/"
  if [ -f "$data/trust.local.json" ] && [ ! -f "$conf/trust.local.json" ]; then mv "$data/trust.local.json" "$conf/"; fi
fi
if [ ! -f "$conf/keys/local-curator.key" ]; then
  rag keys new local-curator --out "$conf/keys" --trust "$conf/trust.local.json"
fi
rag import pydoc --out "$data/corpus/pydoc" --key "$conf/keys/local-curator.key"
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

"""Cost of checking answers against the ledger's commitments, at a given corpus size (default 100k chunks).

Prints, side by side: the per-question cost (read the head, look at the trust files, admit the top_k
passages: a dict lookup, a sha256 and a comparison of the committed fields each) and the one-off costs when
the head moves (check its signature, reload and verify the chain into the in-memory map) and before an ingest
appends (full verify with the signed head).

    python bench/commitment_check.py --chunks 100000 --top-k 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # run as a script, this folder (bench/ingest.py) would shadow the `ingest` package

from ingest.commitments import LedgerGate  # noqa: E402
from ingest.ledger import Ledger, chunk_id  # noqa: E402
from ingest.ledger_head import LedgerKey  # noqa: E402
from ingest.trust import add_trusted_key, write_key_pair  # noqa: E402
from rag.types import StoredChunk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--chunks-per-doc", type=int, default=6, help="the pydoc corpus averages ~6")
    parser.add_argument("--chunk-chars", type=int, default=1200)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--questions", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, public = write_key_pair("curator", root / "keys")
        keyid = add_trusted_key(root / "trust.json", "curator", public).keyid
        ledger = Ledger(root / "data" / "ledger.jsonl", LedgerKey(root / "ledger-key" / "ledger.key"))
        rng = random.Random(0)
        chunks: list[StoredChunk] = []
        records = []
        for d in range(args.chunks // args.chunks_per_doc):
            doc_id, sha = f"doc-{d:06d}.md", hashlib.sha256(str(d).encode()).hexdigest()
            hashes, vectors = [], []
            for n in range(args.chunks_per_doc):
                text = f"{doc_id} {n} " + "".join(rng.choices("abcdefgh ", k=args.chunk_chars))
                hashes.append(hashlib.sha256(text.encode()).hexdigest())
                vectors.append(hashlib.sha256(b"vector " + text.encode()).hexdigest())  # as the store would hash it
                if rng.random() < 0.01:  # keep a sample of stored chunks to look up
                    # A store row spells the committed fields (those left out here are empty in the ledger too).
                    meta = {"doc_id": doc_id, "path": doc_id, "origin": "human", "signer_keyid": keyid}
                    chunks.append(
                        StoredChunk(
                            chunk_id(doc_id, sha, n), text, {**meta, "doc_sha256": sha}, vector_sha256=vectors[-1]
                        )
                    )
            records.append(
                {"action": "add", "doc_id": doc_id, "sha256": sha, "chunks": args.chunks_per_doc, "chars": 0,
                 "origin": "human", "signer_keyid": keyid, "chunk_sha256": hashes, "vector_sha256": vectors}
            )  # fmt: skip
        ledger.append_many(records)
        size_mb = ledger.path.stat().st_size / 1e6

        tracemalloc.start()
        public = root / "ledger-key" / "ledger.pub"  # the gate checks the signed head with the public key alone
        LedgerGate(ledger, [root / "trust.json"], public).follow()
        map_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        gate = LedgerGate(ledger, [root / "trust.json"], public)
        t0 = time.perf_counter()
        gate.follow()
        reload_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ledger.check_before_append()
        verify_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        for q in range(args.questions):
            assert not gate.follow()  # the head did not move: one small file read, one stat per trust file
            for i in range(args.top_k):
                assert gate.admit(chunks[(q * args.top_k + i) % len(chunks)]) is not None
        per_question_ms = (time.perf_counter() - t0) * 1000 / args.questions

    print(
        json.dumps(
            {
                "chunks": args.chunks,
                "documents": len(records),
                "top_k": args.top_k,
                "per_question_ms": round(per_question_ms, 4),
                "reload_on_head_move_s": round(reload_s, 3),
                "commitment_map_peak_mb": round(map_mb, 1),
                "verify_before_append_s": round(verify_s, 3),
                "ledger_mb": round(size_mb, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Regenerate `rejected/`: documents the ingest step must refuse, one per reason, honestly labelled.

The texts were written by this project's authors, so every manifest states origin `ai-generated`
(never `human`). They are signed by a throw-away demo key whose private half is discarded after
signing; its public half sits in `knowledge_base/trust.json` as "demo-examples (no private key kept)"
so that the tampered example fails on its digest, not on its signer.

    python knowledge_base/examples/make_rejected.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ingest.provenance import sign_document
from ingest.trust import add_trusted_key, read_trust_file, write_key_pair

HERE = Path(__file__).parent / "rejected"
TRUST = Path(__file__).parents[1] / "trust.json"
DEMO_NAME = "demo-examples (no private key kept)"

TEXTS = {
    "unsigned.md": "# An unsigned note\n\nThis note has no provenance manifest beside it, so nobody vouches for it.\n",
    "tampered.md": "# A tampered note\n\nThe signed version of this note said the meeting was on Monday.\n",
    "ai_generated.md": "# A generated note\n\nThis paragraph was produced by a language model and is labelled so.\n",
    "unknown_signer.md": "# A note from a stranger\n\nThis note is signed, but by a key that no curator here trusts.\n",
}


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for old in HERE.glob("*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        demo_key, demo_public = write_key_pair("demo", Path(tmp))
        stranger_key, _ = write_key_pair("stranger", Path(tmp))
        from ingest.trust import load_private_key

        demo, stranger = load_private_key(demo_key), load_private_key(stranger_key)
        for name, text in TEXTS.items():
            (HERE / name).write_text(text, encoding="utf-8")
        common = {"authors": ["provenance-first-rag authors"], "license": "Apache-2.0", "origin": "ai-generated"}
        sign_document(HERE / "tampered.md", demo, curator="demo", **common)  # type: ignore[arg-type]
        sign_document(HERE / "ai_generated.md", demo, curator="demo", **common)  # type: ignore[arg-type]
        sign_document(HERE / "unknown_signer.md", stranger, curator="stranger", **common)  # type: ignore[arg-type]
    # Tamper after signing: the digest no longer matches.
    tampered = HERE / "tampered.md"
    tampered.write_text(tampered.read_text().replace("Monday", "Friday"), encoding="utf-8")

    store = read_trust_file(TRUST) if TRUST.exists() else None
    if store is not None:
        kept = [k for k in store.keys if k.name != DEMO_NAME]
        TRUST.write_text(json.dumps({"version": 1, "keys": [k.model_dump(exclude_none=True) for k in kept]}) + "\n")
    entry = add_trusted_key(TRUST, DEMO_NAME, demo_public)
    print(f"wrote {len(TEXTS)} examples; demo key {entry.keyid[:16]} trusted in {TRUST}")


if __name__ == "__main__":
    main()

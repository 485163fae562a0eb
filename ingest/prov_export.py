"""Export the ledger as W3C PROV (PROV-JSON) with the `prov` package."""

from __future__ import annotations

from prov.model import ProvDocument

from ingest.ledger import Ledger

NS = "https://provenance-first-rag.example/ns#"


def ledger_to_prov(ledger: Ledger) -> ProvDocument:
    """Documents become entities (one per version), signers and authors agents, ledger entries activities."""
    doc = ProvDocument()
    doc.add_namespace("rag", NS)
    live_entity: dict[str, str] = {}
    for entry in ledger.entries():
        action, doc_id = entry.get("action"), entry.get("doc_id", "")
        activity = doc.activity(
            f"rag:ledger-{entry['index']}",
            startTime=entry["time"],
            endTime=entry["time"],
            other_attributes={"rag:action": action, "rag:hash": entry["hash"], "rag:prev": entry["prev"]},
        )
        if action in ("add", "replace"):
            entity_id = f"rag:doc-{entry['sha256'][:32]}"
            entity = doc.entity(
                entity_id,
                {
                    "prov:label": entry.get("title") or doc_id,
                    "rag:docId": doc_id,
                    "rag:sha256": entry["sha256"],
                    "rag:origin": entry.get("origin", ""),
                    "rag:license": entry.get("license", ""),
                    "rag:manifestSha256": entry.get("manifest_sha256") or "",
                },
            )
            signer = doc.agent(
                f"rag:key-{entry.get('signer_keyid') or 'unknown'}", {"prov:label": entry.get("signer_name") or ""}
            )
            doc.wasGeneratedBy(entity, activity)
            doc.wasAssociatedWith(activity, signer)
            for author in entry.get("authors") or []:
                doc.wasAttributedTo(entity, doc.agent(f"rag:author-{_slug(author)}", {"prov:label": author}))
            if doc_id in live_entity:
                doc.wasDerivedFrom(entity, live_entity[doc_id])
                doc.wasInvalidatedBy(live_entity[doc_id], activity)
            live_entity[doc_id] = entity_id
        elif action == "remove" and doc_id in live_entity:
            doc.wasInvalidatedBy(live_entity.pop(doc_id), activity)
    return doc


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "anon"

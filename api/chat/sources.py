"""The sources block: provenance in the message text itself, for chat clients that keep only the text.

A cited answer ends with a short Markdown block: one line per cited passage (`[n]`, the document's title, a link
to GET /v1/documents/{id} on this server, its signer and licence) and one line saying what the answer is: a
quotation of a signed source chosen by a model, or text a model generated from the signed sources. It is made
from the citations alone (the metadata the ledger commits), never from a rejected sentence; an abstention gets
none (it cites nothing, and its text already says no signed source supports an answer).

The block is this service's own text, so it is registered in the own-output registry like an answer. Why: a
short answer copied out of a chat with its block and signed as human would otherwise pass ingest, since the
block's lines would outnumber the one matching sentence (the registry refuses on 2 matches or half of a
document's sentences). Each line ends a sentence, so the registry's sentence split finds the same lines in the
raw Markdown and in text copied from the rendered message (markup and `[n]` are dropped when fingerprinting).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

FIELD_CHARS = 120
# Markup, and what GFM's autolinks start from (a scheme's colon, an address's @, "www."): a title stays text.
_MARKUP = re.compile(r"([\\`*_{}\[\]<>()#|~!:@]|(?<=www)\.)")

QUOTATION = (
    "Answer: a quotation of the signed human-written source, chosen by a model and not written by one; "
    "it was checked word for word against the source."
)
QUOTATION_NOT_HUMAN = (
    "Answer: a quotation of a source its curator signed as {origin}, chosen by a model; "
    "do not sign or ingest it as human-written."
)
GENERATED = "Answer: AI-generated from the signed sources above; every sentence was checked against them."
WATERMARKED = " The generated text carries a watermark."


def sources_block(answer: dict[str, Any], base_url: str) -> str | None:
    """The Markdown block for an answer as it may leave (`Answer.as_dict()`), or None when it cites nothing."""
    citations = answer.get("citations") or []
    if answer.get("abstained") or not citations:
        return None
    lines = [_source_line(citation, base_url) for citation in citations]
    return "\n\n**Sources**\n\n" + "\n".join(lines) + f"\n\n*{label_line(answer)}*"


def label_line(answer: dict[str, Any]) -> str:
    """What the answer is, honestly: a quotation (of human or partly machine-written text) or AI-generated."""
    label = answer.get("label") or {}
    if label.get("extractive"):
        origin = str(label.get("source_origin") or "human")
        return QUOTATION if origin == "human" else QUOTATION_NOT_HUMAN.format(origin=_plain(origin))
    return GENERATED + (WATERMARKED if label.get("watermark") else "")


def register(block: str, record_output: Callable[[list[str], list[str]], object], passages: Sequence[str]) -> bool:
    """Register the block's sentences as this service's output, split as ingest will split a copy of them; the
    cited passages tell the registry what is a quotation (none of these lines is). False if that failed."""
    from rag.guardrails.registry import sentences

    try:
        record_output(sentences(block), list(passages))
    except Exception:  # the answer has been registered and checked; only the block is withheld
        log.exception("registering the sources block failed; it is not sent")
        return False
    return True


def documents_base(public_url: str | None, request_base: str) -> str:
    """Where the links point: the configured public address, else the address the request came to."""
    return (public_url or request_base).rstrip("/")


def _source_line(citation: dict[str, Any], base_url: str) -> str:
    doc_id = str(citation.get("doc_id", ""))
    title = _plain(str(citation.get("title") or doc_id))
    signer = _plain(str(citation.get("signer_name") or "an unnamed curator"))
    licence = _plain(str(citation.get("license") or "not stated"))
    link = f"{base_url}/v1/documents/{quote(doc_id, safe='/')}"
    return f"- [{int(citation.get('n', 0))}] {title}, <{link}>, signed by {signer}, licence {licence}."


def _plain(text: str) -> str:
    """One line of metadata as inert Markdown: whitespace folded, at most FIELD_CHARS, markup escaped."""
    text = " ".join(text.split())
    if len(text) > FIELD_CHARS:
        text = text[: FIELD_CHARS - 1].rstrip() + "…"
    return _MARKUP.sub(r"\\\1", text)

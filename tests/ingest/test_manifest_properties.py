"""Manifest parsing and verification under any input: a reason code, never an exception, never a false accept.

Property-based (hypothesis): any bytes, any JSON, any nesting and any field types as a manifest; a valid manifest
with one byte of its payload, signature or key id changed. Example counts are bounded so the suite stays fast.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ingest.ledger import Ledger
from ingest.pipeline import Ingestor
from ingest.provenance import (
    PAYLOAD_TYPE,
    build_statement,
    manifest_path,
    pae,
    sign_statement,
    text_digest,
    verify_document,
)
from ingest.trust import TrustStore, add_trusted_key, load_private_key, write_key_pair
from rag.settings import Settings
from tests.conftest import pydoc_text
from tests.fakes import FakeEmbedder, InMemoryStore

BOUNDED = hypothesis_settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Every code verification can give for a document whose text is fine.
MANIFEST_REASONS = {
    "malformed_manifest",
    "unknown_signer",
    "revoked_signer",
    "expired_signer",
    "not_yet_valid",
    "bad_signature",
    "digest_mismatch",
    "subject_mismatch",
    "unreadable",
}
TEXT = pydoc_text("pass")
PREDICATE = {
    "title": "pass",
    "authors": ["Python documentation authors"],
    "origin": "human",
    "created": "2025-01-01T00:00:00Z",
    "license": "PSF-2.0",
    "curator": {"name": "t", "reviewed_at": "2025-01-01T00:00:00Z"},
}


class Corpus:
    """One document, a trusted key, and a valid manifest for it (as bytes) to break."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.document = root / "doc.md"
        self.document.write_text(TEXT, encoding="utf-8")
        key_path, public = write_key_pair("curator", root.parent / "keys")
        trust_path = root.parent / "trust.json"
        add_trusted_key(trust_path, "curator", public)
        self.trust = TrustStore.load(trust_path)
        self.key = load_private_key(key_path)
        self.keyid = next(iter(self.trust.keys))
        statement = build_statement("doc.md", text_digest(TEXT), PREDICATE)
        self.valid = (json.dumps(sign_statement(statement, self.key), indent=2) + "\n").encode()

    def verify(self, manifest: bytes) -> tuple[bool, str | None]:
        manifest_path(self.document).write_bytes(manifest)
        verdict = verify_document(self.document, self.root, self.trust, max_bytes=10**6)
        return verdict.ok, verdict.reason


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("properties") / "corpus"
    root.mkdir()
    return Corpus(root)


def refused(corpus: Corpus, manifest: bytes) -> str:
    ok, reason = corpus.verify(manifest)
    assert not ok and reason in MANIFEST_REASONS, reason
    return str(reason)


def test_the_valid_manifest_verifies(corpus: Corpus) -> None:
    assert corpus.verify(corpus.valid) == (True, None)


# --- any input -------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@BOUNDED
@given(raw=st.binary(max_size=2048))
@example(raw=b"")
@example(raw=b"\xff\xfe{}")
@example(raw=b"[" * 50_000 + b"]" * 50_000)
@example(raw=b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
@example(raw=b'{"payloadType": "application/vnd.in-toto+json", "payload": "\\ud800", "signatures": []}')
def test_any_bytes_are_a_reason_never_an_exception(corpus: Corpus, raw: bytes) -> None:
    assert refused(corpus, raw) == "malformed_manifest"


@BOUNDED
@given(value=json_values)
def test_any_json_is_a_reason_never_an_exception(corpus: Corpus, value: Any) -> None:
    refused(corpus, json.dumps(value).encode())


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def statements(corpus_keyid: str) -> st.SearchStrategy[Any]:
    """Statement-shaped objects whose every field may have any type (or the right one)."""
    subject = st.fixed_dictionaries(
        {"name": st.just("doc.md") | json_values, "digest": st.just({"sha256": text_digest(TEXT)}) | json_values}
    )
    predicate = st.fixed_dictionaries(
        {key: st.just(value) | json_values for key, value in PREDICATE.items()},
        optional={"source_uri": json_values, "extra": json_values},
    )
    return st.fixed_dictionaries(
        {
            "_type": st.just("https://in-toto.io/Statement/v1") | json_values,
            "subject": st.lists(subject, max_size=2) | json_values,
            "predicateType": st.just("https://provenance-first-rag.example/document-provenance/v1") | json_values,
            "predicate": predicate | json_values,
        }
    )


@BOUNDED
@given(data=st.data())
def test_any_field_types_in_the_envelope_are_a_reason_never_an_exception(corpus: Corpus, data: st.DataObject) -> None:
    keyid = st.just(corpus.keyid) | json_values
    sig = st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()) | json_values
    envelope = data.draw(
        st.fixed_dictionaries(
            {
                "payloadType": st.just(PAYLOAD_TYPE) | json_values,
                "payload": statements(corpus.keyid).map(b64) | json_values,
                "signatures": st.lists(st.fixed_dictionaries({"keyid": keyid, "sig": sig}), max_size=2) | json_values,
            },
            optional={"extra": json_values},
        )
    )
    refused(corpus, json.dumps(envelope).encode())


@BOUNDED
@given(statement=statements(""))
def test_a_signed_statement_of_any_shape_is_a_reason_never_an_exception(corpus: Corpus, statement: Any) -> None:
    """Signed by the trusted key, so parsing, not the signature, decides: accepted only if it is the real one."""
    # Signed as a hostile signer would: any JSON (our signer's RFC 8785 would refuse some of it, e.g. 2**53).
    payload = json.dumps(statement).encode()
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": corpus.keyid, "sig": base64.b64encode(corpus.key.sign(pae(PAYLOAD_TYPE, payload))).decode()}
        ],
    }
    manifest = json.dumps(envelope).encode()
    ok, reason = corpus.verify(manifest)
    real = build_statement("doc.md", text_digest(TEXT), PREDICATE)
    if ok:  # extra predicate fields are allowed (signed all the same); what is checked must be the real thing
        assert {k: statement[k] for k in ("_type", "subject", "predicateType")} == {
            k: real[k] for k in ("_type", "subject", "predicateType")
        }
        assert all(statement["predicate"][k] == v for k, v in PREDICATE.items())
    else:
        assert reason in MANIFEST_REASONS


# --- one byte changed ------------------------------------------------------------------------------------


def spans(manifest: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of the payload, signature and key id values in the manifest's JSON text."""
    text = manifest.decode()
    found = {}
    for field in ("payload", "sig", "keyid"):
        start = text.index(f'"{field}": "') + len(f'"{field}": "')
        found[field] = (start, text.index('"', start))
    return found


@BOUNDED
@given(data=st.data())
@example(data=None)  # the last character of the signature: its spare bits (non-canonical base64)
def test_one_byte_changed_in_payload_signature_or_key_id_is_refused(corpus: Corpus, data: st.DataObject | None) -> None:
    regions = spans(corpus.valid)
    if data is None:
        field, position, value = "sig", regions["sig"][1] - 3, None
    else:
        field = data.draw(st.sampled_from(sorted(regions)))
        position = data.draw(st.integers(*regions[field]).filter(lambda i: i < regions[field][1]))
        value = data.draw(st.integers(0, 255).filter(lambda v: v != corpus.valid[position]))
    mutated = bytearray(corpus.valid)
    if value is None:  # flip the lowest bit of a base64 digit whose low bits are padding
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        mutated[position] = alphabet[alphabet.index(mutated[position]) ^ 1]
    else:
        mutated[position] = value
    assert bytes(mutated) != corpus.valid
    refused(corpus, bytes(mutated))


@hypothesis_settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values, mangle=st.sampled_from(["manifest", "payload"]))
def test_ingest_records_any_malformed_manifest_and_stays_consistent(
    settings: Settings, tmp_path: Path, value: Any, mangle: str
) -> None:
    """Through the whole ingest: the refusal reaches the report and the ledger, and the ledger still verifies."""
    root = tmp_path / "c"
    root.mkdir(exist_ok=True)
    document = root / "doc.md"
    document.write_text(TEXT, encoding="utf-8")
    envelope = value if mangle == "manifest" else {"payloadType": PAYLOAD_TYPE, "payload": b64(value), "signatures": []}
    manifest_path(document).write_text(json.dumps(envelope))
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([root])
    assert [item["reason"] for item in report.rejected] == ["malformed_manifest"]
    ledger = Ledger(settings.ledger_path)
    assert ledger.verify().ok
    assert [e["reason"] for e in ledger.entries() if e["action"] == "reject"][-1] == "malformed_manifest"

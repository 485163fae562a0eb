"""The own-output registry at ingest: pinned by the ledger key, and told what is human text.

**The pin.** The registry (`rag.guardrails.registry`) is written by the serving process, which holds no private
key, so anyone who can write the data dir can cut or delete it, and a cut registry fails open: the answers it
held could be laundered back in. So every ingest first checks the file against a pin: the number of whole
records and the SHA-256 of the header and those records, signed with the ledger key (a DSSE envelope) and kept
beside that key, outside the data dir (`<ledger key>.registry.json`, one pin per registry path). The file must
still hold at least the pinned records, byte for byte, and no record after them may fail its CRC; the pin then
moves to the file as it is. Otherwise ingest refuses to run (`registry_tampered`) until an operator puts the
file back or runs `rag registry accept --yes`, which pins it as it is and says what was lost.

What the pin cannot see: records appended since the last pin (answers released since the last ingest or
`rag registry pin`) can be cut without a trace; pinning more often (`rag registry pin` from cron) narrows that
window. `rag ledger reset` keeps the pin: what the service released is still out there.

**Human text.** A released sentence that quotes the corpus is not our output: the answer service's registry gets
`corpus_quotable`, which finds the committed passages an ungrounded answer may echo (BM25 over the store, each
chunk admitted by the ledger gate), and the ingest check lets through a text whose digest is that of a live
document (`LiveDigests`): a new manifest for admitted human text is not laundering, whatever our answers
quoted from it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.ledger import Ledger
from ingest.ledger_head import LedgerKey, open_payload
from ingest.provenance import text_digest
from ingest.trust import utc_now
from rag.errors import LedgerError, RagError
from rag.guardrails.registry import MAGIC, RECORD, FileState, OutputRegistry, OwnOutputCheck

if TYPE_CHECKING:
    from rag.protocols import VectorStore
    from rag.retrieval import ChunkGate, LexicalIndex
    from rag.settings import Settings

log = logging.getLogger(__name__)

PIN_PAYLOAD_TYPE = "application/vnd.provenance-first-rag.registry-pin+json"


class RegistryTamperedError(RagError):
    """The own-output registry is shorter than, or differs from, what the ledger key last pinned."""

    code = "registry_tampered"
    http_status = 500


@dataclass(frozen=True)
class PinStatus:
    """The pin (its payload, None if there is none yet), the file as it is, and what is wrong between them."""

    pinned: dict[str, Any] | None
    state: FileState
    problems: list[str] = field(default_factory=list)

    @property
    def pinned_records(self) -> int:
        return int(self.pinned["records"]) if self.pinned else 0


class RegistryPin:
    """The last pinned state of one registry file, signed by the ledger key and kept beside it."""

    def __init__(self, registry: OutputRegistry, key: LedgerKey) -> None:
        self.registry = registry
        self.key = key
        self.path = key.path.with_name(key.path.name + ".registry.json")
        self._name = str(registry.path.resolve())

    def status(self) -> PinStatus:
        """Compare the file with its pin; writes nothing."""
        problems: list[str] = []
        pinned: dict[str, Any] | None = None
        signed = self._pins().get(self._name)
        if signed is not None and not self.key.exists():
            problems.append(f"the ledger key {self.key.path} that pinned the registry is missing")
        elif signed is not None:
            try:
                pinned = open_payload(
                    self.key.public(), signed, PIN_PAYLOAD_TYPE, what="registry pin", kind="registry pin"
                )
            except LedgerError as exc:
                problems.append(f"{exc} ({self.path})")
        if pinned is not None and (
            pinned.get("registry") != self._name
            or pinned.get("format") != MAGIC.decode()
            or not isinstance(pinned.get("records"), int)
        ):
            problems.append(f"the pin in {self.path} is not for this registry file in this format")
            pinned = None
        count = int(pinned["records"]) if pinned else 0
        state = self.registry.file_state(count)
        when = f" (pinned {pinned.get('pinned_at')})" if pinned else ""
        if not state.readable:
            problems.append(f"{self.registry.path} is not an output registry of this version")
        elif not state.exists and count:
            problems.append(f"{self.registry.path} is missing, but {count} records were pinned{when}")
        elif state.records < count:
            problems.append(f"{self.registry.path} holds {state.records} records, but {count} were pinned{when}: cut")
        elif pinned is not None and state.prefix_sha256 != pinned.get("sha256"):
            problems.append(f"the first {count} records of {self.registry.path} differ from the pinned ones{when}")
        if state.readable and state.damaged:
            problems.append(f"{state.damaged} records after the pinned ones fail their CRC (damaged or forged)")
        return PinStatus(pinned, state, problems)

    def check_and_extend(self) -> PinStatus:
        """Before an ingest: raise `registry_tampered` if the file is not what was pinned, else pin it as it is."""
        status = self.status()
        if status.problems:
            raise RegistryTamperedError(
                "The own-output registry does not match its pin, so released answers could be laundered back in: "
                + "; ".join(status.problems)
                + ". Nothing was ingested. Put the file back from a backup, or run `rag registry accept --yes` "
                "to pin it as it is now."
            )
        if status.pinned is None or status.pinned.get("sha256") != status.state.sha256:
            self._write(status.state)
        return status

    def accept(self) -> tuple[PinStatus, PinStatus]:
        """The operator's command: pin the file as it is, whatever the old pin says; (before, after)."""
        before = self.status()
        if not before.state.readable:
            raise RegistryTamperedError(
                f"{self.registry.path} is not an output registry of this version; move it away first "
                "(an empty registry is then pinned).",
            )
        self._write(before.state)
        after = self.status()
        log.warning(
            "pinned the output registry %s as it is: %d records (pinned before: %d)%s",
            self.registry.path,
            after.state.records,
            before.pinned_records,
            "; it did not match its pin: " + "; ".join(before.problems) if before.problems else "",
        )
        return before, after

    def _write(self, state: FileState) -> None:
        if not self.key.exists():
            raise LedgerError(f"The ledger key {self.key.path} is missing: the registry cannot be pinned.")
        payload = {
            "registry": self._name,
            "format": MAGIC.decode(),
            "record_bytes": RECORD.itemsize,
            "records": state.records,
            "sha256": state.sha256,
            "pinned_at": utc_now(),
        }
        signed = self.key.sign_payload(payload, PIN_PAYLOAD_TYPE)
        with (self.key.path.parent / (self.key.path.name + ".lock")).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pins = self._pins()
            pins[self._name] = signed
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)

    def _pins(self) -> dict[str, Any]:
        try:
            pins = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RegistryTamperedError(f"The registry pins in {self.path} cannot be read ({exc}).") from exc
        return pins if isinstance(pins, dict) else {}


class LiveDigests:
    """Digests of the texts the ledger holds live, re-read when the ledger file changes."""

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path
        self._seen: tuple[int, int] | None = None
        self._digests: set[str] = set()

    def __call__(self) -> set[str]:
        try:
            stat = os.stat(self.ledger_path)
        except FileNotFoundError:
            return set()
        if self._seen != (stat.st_size, stat.st_mtime_ns):
            self._digests = {doc.sha256 for doc in Ledger(self.ledger_path).live().values()}
            self._seen = (stat.st_size, stat.st_mtime_ns)
        return self._digests

    def admits(self, text: str) -> bool:
        """Whether `text` is, digest for digest, a document the ledger holds live."""
        return text_digest(text) in self()


def own_output_check(settings: Settings, registry: OutputRegistry) -> OwnOutputCheck:
    """The registry's ingest check, with its pin (checked before each ingest) and the live-digest exemption."""
    cfg = settings.registry
    pin = RegistryPin(registry, LedgerKey(settings.ledger_key_path))
    return OwnOutputCheck(
        registry,
        min_matches=cfg.min_matches,
        min_share=cfg.min_share,
        long_words=cfg.long_words,
        admitted=LiveDigests(settings.ledger_path).admits,
        guard=pin.check_and_extend,
    )


def corpus_quotable(
    store: VectorStore, lexical: LexicalIndex, gate: ChunkGate, refresh: Callable[[], None], *, per_sentence: int = 3
) -> Callable[[Sequence[str]], list[str]]:
    """Committed passages that released sentences may quote: the best BM25 hits of each, admitted by the gate."""

    def find(released: Sequence[str]) -> list[str]:
        refresh()  # the ungrounded path does not follow the ledger head itself
        ids = list(dict.fromkeys(i for sentence in released for i, _ in lexical.search(sentence, per_sentence)))
        return [chunk.text for chunk in store.get(ids, vectors=True) if gate.admit(chunk) is not None] if ids else []

    return find

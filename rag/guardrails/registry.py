"""The own-output registry: every released answer is fingerprinted, and ingest refuses documents made of them.

A watermark needs a hundred or more generated tokens to show; a released answer is often one sentence. So the
service records what it releases (each sentence, and the whole answer when it has several) before the text
leaves, and ingest looks each sentence of a new document up:

- an exact hash (BLAKE2b, 64 bits) of the normalised text (NFKC, format characters such as zero-width spaces and
  soft hyphens dropped, Cyrillic and Greek look-alikes of Latin letters folded, case folded, citation marks and
  punctuation gone);
- a MinHash (datasketch, 64 permutations, the low 16 bits of each kept) over word bigrams, banded for LSH with
  the bands and rows datasketch's `MinHashLSH` chooses for the threshold; a candidate matches when its estimated
  Jaccard similarity reaches it. A word changed in a 15-word sentence keeps a bigram Jaccard of ~0.75;
  reordering sentences changes nothing. (A 64-bit SimHash found 1 edited sentence in 9 where MinHash found 7.)

Quotations are human text: a sentence that occurs verbatim (after normalisation) in one of the answer's
passages is not registered, and neither is one as similar to a passage sentence as a match would need
(registering it would make its own human source look like our output).

The file (`outputs.reg` in the data dir) is shared by the serving process and ingest: a 16-byte header, then
fixed-size records, each with a CRC. Appends take a file lock, are written with one `write` and fsynced, and
happen before the text is released: a crash mid-append leaves a torn tail of text that was never released,
which readers ignore (they read whole records only) and the next append cuts off. Readers reload cheaply
when the file grows: only the new records are read; the LSH bands are rebuilt lazily, when a check needs them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
import unicodedata
import zlib
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

NUM_PERM = 64
SEED = 1
MAGIC = b"RAGOUTS2"
HEADER = MAGIC + NUM_PERM.to_bytes(4, "little") + SEED.to_bytes(4, "little")
KIND_SENTENCE, KIND_ANSWER = 1, 2
RECORD = np.dtype(
    [
        ("kind", "u1"),
        ("words", "<u2"),
        ("time_ms", "<i8"),
        ("digest", "S8"),
        ("sig", "<u2", (NUM_PERM,)),
        ("crc", "<u4"),
    ]
)
_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_NON_WORD = re.compile(r"[\W_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5] * 8, dtype=np.uint64)


# Cyrillic and Greek letters that look like Latin ones, folded to them (a laundered copy swaps a few in).
_CONFUSABLES = str.maketrans(
    {
        **dict(zip("аеорсухіјѕ", "aeopcyxijs", strict=True)),
        **dict(zip("АЕОРСУХІЈЅ", "aeopcyxijs", strict=True)),
        **dict(zip("οαεικνρτυχ", "oaeikvptux", strict=True)),
        **dict(zip("ΟΑΕΙΚΝΡΤΥΧ", "oaeiknptyx", strict=True)),
    }
)


def normalise(text: str) -> str:
    """The form fingerprints are taken of: NFKC, format characters (Unicode category Cf: zero-width space and
    joiner, soft hyphen, bidi marks) dropped, Cyrillic and Greek look-alikes folded to Latin, case folded, no
    citation marks, words separated by one space."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf").translate(_CONFUSABLES)
    text = _CITATION.sub("", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def paragraphs(text: str) -> list[list[str]]:
    """The sentences of each paragraph (blank-line separated, lines joined), split after . ! or ?."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        joined = " ".join(line.strip().lstrip("#>*- ").strip() for line in paragraph.splitlines())
        found.append([s.strip() for s in _SENTENCE_END.split(joined) if s.strip()])
    return [p for p in found if p]


def sentences(text: str) -> list[str]:
    """Sentences of a document, paragraph by paragraph."""
    return [s for p in paragraphs(text) for s in p]


def digest(normalised: str) -> bytes:
    return hashlib.blake2b(normalised.encode(), digest_size=8).digest()


class Fingerprinter:
    """MinHash signatures over word bigrams (unigrams for a one-word text), with cached permutations."""

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        template = MinHash(num_perm=NUM_PERM, seed=SEED)
        self._minhash, self._perms, self._scheme = MinHash, template.permutations, template.scheme
        lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)  # only for its choice of bands and rows
        self.bands, self.rows = int(lsh.b), int(lsh.r)

    def signature(self, normalised: str) -> np.ndarray:
        words = normalised.split()
        shingles = [f"{a} {b}".encode() for a, b in itertools.pairwise(words)] or [w.encode() for w in words]
        minhash = self._minhash(num_perm=NUM_PERM, seed=SEED, permutations=self._perms, scheme=self._scheme)
        minhash.update_batch(shingles)
        return (np.asarray(minhash.hashvalues) & 0xFFFF).astype(np.uint16)  # b-bit MinHash, b = 16

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 keys, one per LSH band; equal bands give equal keys (collisions are verified)."""
        n = sigs.shape[0]
        banded = sigs[:, : self.bands * self.rows].astype(np.uint64).reshape(n, self.bands, self.rows)
        with np.errstate(over="ignore"):
            return (banded * _MIX[: self.rows]).sum(axis=2, dtype=np.uint64) ^ np.arange(self.bands, dtype=np.uint64)


@dataclass(frozen=True)
class Match:
    """A document sentence that matches released output: when that was first released, and how closely."""

    sentence: str
    released_ms: int
    similarity: float


class OutputRegistry:
    """The append-only registry of released output, shared between the serving process and ingest."""

    def __init__(self, path: Path, *, threshold: float = 0.5, min_words: int = 4) -> None:
        self.path = path
        self.min_words = min_words
        self.fingerprinter = Fingerprinter(threshold)
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []  # records as read, joined only when a lookup needs them all
        self._joined = np.zeros(0, dtype=RECORD)
        self._count = 0
        self._offset = 0  # bytes of the file read so far (header and whole records)
        self._identity: tuple[int, int] | None = None
        self._digests: dict[bytes, int] = {}  # digest → first release time
        self._answers: set[bytes] = set()  # digests of whole answers
        self._bands: list[tuple[np.ndarray, np.ndarray]] | None = None  # per band: sorted keys, record index
        self.damaged = 0  # records whose CRC failed (skipped)

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return self._count

    def record(self, released: Sequence[str], passages: Sequence[str] = ()) -> int:
        """Register released sentences (and, if several, the whole answer) that are not quotations of `passages`.

        Returns the number of records written. Call it before the text leaves: it fsyncs."""
        quoted = _Quotations(passages, self.fingerprinter)
        own = [s for s in released if len(normalise(s).split()) >= self.min_words and not quoted.covers(s)]
        texts = [(KIND_SENTENCE, s) for s in own] + ([(KIND_ANSWER, " ".join(own))] if len(own) > 1 else [])
        if not texts:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, FileLock(str(self.path) + ".lock"):
            self._sync()
            records = self.fingerprint(texts, int(time.time() * 1000), skip=self._digests.keys())
            if len(records):
                self._append(records.tobytes())
                self._sync()
        return len(records)

    def fingerprint(
        self, texts: Sequence[tuple[int, str]], now_ms: int, skip: Container[bytes] = frozenset()
    ) -> np.ndarray:
        """Records for (kind, text) pairs, without those whose digest is in `skip` (or repeated)."""
        batch, seen = [], set[bytes]()
        for kind, text in texts:
            norm = normalise(text)
            key = digest(norm)
            if key not in seen and key not in skip:
                seen.add(key)
                batch.append((kind, min(len(norm.split()), 65535), now_ms, key, self.fingerprinter.signature(norm), 0))
        records = np.array(batch, dtype=RECORD)
        for i in range(len(records)):
            records[i]["crc"] = _crc(records[i : i + 1])
        return records

    def append_records(self, records: np.ndarray) -> None:
        """Append records made by `fingerprint` (bulk fills, e.g. the benchmark's), under the file lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, FileLock(str(self.path) + ".lock"):
            self._append(records.tobytes())

    def matches(self, text: str) -> list[Match]:
        """The sentences of `text` that match released output (exactly, or as near as the threshold)."""
        with self._lock:
            self._sync()
            if not self._count:
                return []
            units = paragraphs(text)
            found = {m.sentence: m for m in self._lookup([s for p in units for s in p])}
            # A whole answer is registered too: a paragraph that matches one (its sentences reordered, or split
            # and joined otherwise) counts each of its sentences.
            for whole in self._lookup([" ".join(p) for p in units if len(p) > 1], answers_only=True):
                for sentence in next(p for p in units if " ".join(p) == whole.sentence):
                    if len(normalise(sentence).split()) >= self.min_words:
                        found.setdefault(sentence, Match(sentence, whole.released_ms, whole.similarity))
            return list(found.values())

    def _lookup(self, texts: list[str], *, answers_only: bool = False) -> list[Match]:
        candidates = [(s, n) for s, n in ((s, normalise(s)) for s in texts) if len(n.split()) >= self.min_words]
        found: list[Match] = []
        near: list[tuple[str, str]] = []
        for sentence, norm in candidates:
            released = self._digests.get(digest(norm))
            if released is not None and (not answers_only or digest(norm) in self._answers):
                found.append(Match(sentence, released, 1.0))
            else:
                near.append((sentence, norm))
        return found + (self._near(near, answers_only) if near else [])

    def _near(self, near: list[tuple[str, str]], answers_only: bool = False) -> list[Match]:
        bands = self._band_index()
        sigs = np.stack([self.fingerprinter.signature(norm) for _, norm in near])
        keys = self.fingerprinter.band_keys(sigs)
        found = []
        for i, (sentence, _) in enumerate(near):
            hits: set[int] = set()
            for b, (sorted_keys, order) in enumerate(bands):
                lo, hi = (
                    np.searchsorted(sorted_keys, keys[i, b], side="left"),
                    np.searchsorted(sorted_keys, keys[i, b], side="right"),
                )
                hits.update(order[lo:hi].tolist())
            if not hits:
                continue
            index = np.fromiter(hits, dtype=np.int64)
            if answers_only:
                index = index[self._records["kind"][index] == KIND_ANSWER]
                if not len(index):
                    continue
            similarity = (self._records["sig"][index] == sigs[i]).mean(axis=1)
            best = int(np.argmax(similarity))
            if similarity[best] >= self.fingerprinter.threshold:
                found.append(Match(sentence, int(self._records["time_ms"][index[best]]), float(similarity[best])))
        return found

    @property
    def _records(self) -> np.ndarray:
        """All records read, joined once after each batch of syncs (a release appends without copying)."""
        if self._chunks:  # np.concatenate copies: the chunks read from the file are read-only views
            self._joined = np.concatenate([self._joined, *self._chunks] if len(self._joined) else self._chunks)
            self._chunks = []
        return self._joined

    def _band_index(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._bands is None:
            keys = self.fingerprinter.band_keys(self._records["sig"])
            self._bands = []
            for b in range(keys.shape[1]):
                order = np.argsort(keys[:, b], kind="stable")
                self._bands.append((keys[order, b], order))
        return self._bands

    def _sync(self) -> None:
        """Read what was appended since the last look; start over if the file was replaced or cut."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._offset:
                self._reset()
            return
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._offset:
            self._reset()
            self._identity = identity
        whole = _whole_size(stat.st_size)
        if whole <= self._offset:
            return
        with self.path.open("rb") as handle:
            if self._offset == 0:
                if handle.read(len(HEADER)) != HEADER:
                    raise ValueError(f"{self.path} is not an output registry of this version")
                self._offset = len(HEADER)
            handle.seek(self._offset)
            data = handle.read(whole - self._offset)
        records = np.frombuffer(data[: len(data) - len(data) % RECORD.itemsize], dtype=RECORD)
        good = np.array([_crc(records[i : i + 1]) == records["crc"][i] for i in range(len(records))], dtype=bool)
        self.damaged += int((~good).sum())
        records = records[good]
        self._offset += len(data)
        for key, released in zip(records["digest"].tolist(), records["time_ms"].tolist(), strict=True):
            self._digests.setdefault(key, released)
        self._answers.update(records["digest"][records["kind"] == KIND_ANSWER].tolist())
        if len(records):
            self._chunks.append(records)
            self._count += len(records)
            self._bands = None

    def _reset(self) -> None:
        self._chunks, self._joined, self._count = [], np.zeros(0, dtype=RECORD), 0
        self._offset, self._identity = 0, None
        self._digests, self._answers, self._bands, self.damaged = {}, set(), None, 0

    def _append(self, data: bytes) -> None:
        """One write, fsynced; a torn tail left by a crash (never released) is cut off first."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < len(HEADER):
                os.ftruncate(fd, 0)
                data = HEADER + data
                size = 0
            elif _whole_size(size) != size:
                os.ftruncate(fd, _whole_size(size))
                size = _whole_size(size)
            os.lseek(fd, size, os.SEEK_SET)
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)


class OwnOutputCheck:
    """A `ContentCheck` for the ingestor: `own_output_detected` when enough sentences match released output."""

    def __init__(self, registry: OutputRegistry, *, min_matches: int = 2, min_share: float = 0.5) -> None:
        self.registry = registry
        self.min_matches = min_matches
        self.min_share = min_share

    def check(self, text: str) -> tuple[str, str] | None:
        found = self.registry.matches(text)
        if not found:
            return None
        checked = sum(1 for s in sentences(text) if len(normalise(s).split()) >= self.registry.min_words)
        if len(found) < self.min_matches and len(found) < self.min_share * checked:
            return None
        exact = sum(1 for m in found if m.similarity == 1.0)
        first, last = min(m.released_ms for m in found), max(m.released_ms for m in found)
        return (
            "own_output_detected",
            f"{len(found)} of {checked} sentences match answers this service released ({exact} exactly, "
            f"{len(found) - exact} nearly), released {_when(first)}" + ("" if first == last else f" to {_when(last)}"),
        )


class _Quotations:
    """The answer's passages, to tell a quotation (human text) from the service's own sentence."""

    def __init__(self, passages: Sequence[str], fingerprinter: Fingerprinter) -> None:
        self.padded = [f" {normalise(p)} " for p in passages]
        self.fingerprinter = fingerprinter
        self._sigs: np.ndarray | None = None
        self._passages = passages

    def covers(self, sentence: str) -> bool:
        norm = normalise(sentence)
        if any(f" {norm} " in passage for passage in self.padded):
            return True
        if self._sigs is None:
            norms = [n for p in self._passages for n in (normalise(s) for s in sentences(p)) if n]
            sigs = [self.fingerprinter.signature(n) for n in norms]
            self._sigs = np.stack(sigs) if sigs else np.zeros((0, NUM_PERM), dtype=np.uint16)
        if not len(self._sigs):
            return False
        similarity = (self._sigs == self.fingerprinter.signature(norm)).mean(axis=1)
        return bool(similarity.max() >= self.fingerprinter.threshold)


def _crc(record: np.ndarray) -> int:
    return zlib.crc32(record.tobytes()[: RECORD.itemsize - 4])


def _whole_size(size: int) -> int:
    """The file size up to the last whole record (a crash can leave a torn one after it)."""
    if size < len(HEADER):
        return 0
    return size - (size - len(HEADER)) % RECORD.itemsize


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

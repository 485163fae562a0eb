"""The own-output registry: every released answer is fingerprinted, and ingest refuses documents made of them.

A watermark needs a hundred or more generated tokens to show; a released answer is often one sentence. So the
service records what it releases (each sentence, and the whole answer when it has several) before the text
leaves, and ingest looks each sentence of a new document up:

- an exact hash (BLAKE2b, 64 bits) of the normalised text (NFKC, format characters such as zero-width spaces and
  soft hyphens dropped, Cyrillic and Greek look-alikes of Latin letters folded, case folded, citation marks and
  punctuation gone);
- a MinHash (datasketch, 64 permutations, the low 16 bits of each kept) over word bigrams, banded for LSH (21
  bands of 3 rows: a wide net, every candidate verified on its signature); a sentence matches a record when their
  estimated bigram Jaccard reaches `threshold` (0.5);
- the set of its words (32-bit hashes, all of them up to 32 distinct words): a sentence also matches a record
  when both sets share `word_min_words` (6) words or more and differ by at most `word_max_changed` (2)
  substitutions, i.e. four words counted both ways. A changed word costs a sentence two bigrams but one word:
  two words changed in a 10-word sentence leave a bigram Jaccard of ~0.4, under the threshold, and are caught
  here. Candidates come from an index of word hashes: a record within two substitutions holds one of any five
  of the sentence's words, so the five rarest are looked up (prefix filtering: no candidate is missed).

Reordering sentences changes nothing.

Quotations are human text: a sentence that occurs verbatim (after normalisation) in one of the answer's
passages is not registered (an extractive answer's span, whatever its length), nor one nearly a span of a
passage sentence (80% of its words in order, within a stretch at most two words longer), nor one that matches
a passage sentence as a document sentence would match a record (registering it would make its own human source
look like our output). When the caller gives no passages (an ungrounded answer), `quotable` finds the committed
passages the sentences may echo.

The file (`outputs.reg` in the data dir) is shared by the serving process and ingest: a 16-byte header, then
fixed-size records, each with a CRC. Appends take a file lock, are written with one `write` and fsynced, and
happen before the text is released: a crash mid-append leaves a torn tail of text that was never released,
which readers ignore (they read whole records only) and the next append cuts off. Readers reload cheaply
when the file grows: only the new records are read; the LSH bands are rebuilt lazily, when a check needs them.
Nothing in the file stops it being cut or deleted: ingest checks it against a pin signed by the ledger key
(`ingest.registry_guard`) first. A file of the previous version (bigram signatures only) is rewritten in this
one when first opened; its records keep their hash and bigram signature and have no word-set signature.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import itertools
import logging
import os
import re
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

log = logging.getLogger(__name__)

NUM_PERM = 64
SEED = 1
MAGIC = b"RAGOUTS3"
HEADER = MAGIC + NUM_PERM.to_bytes(4, "little") + SEED.to_bytes(4, "little")
HEADER_V2 = b"RAGOUTS2" + HEADER[8:]
KIND_SENTENCE, KIND_ANSWER = 1, 2
LSH_ROWS = 3
CONTAINED = 0.8  # a released sentence with this share of its bigrams in one passage sentence quotes it
WORD_SLOTS = 32  # the set of words: its smallest 32 word hashes (all of them for a sentence of 32 words or fewer)
# The digest is a little-endian integer: numpy drops the trailing NUL bytes of an "S8" field when it is read.
# `distinct` is 0 for a record carried over from a version-2 file: it has no word set, and matches exactly or by
# bigrams only.
RECORD = np.dtype(
    [
        ("kind", "u1"),
        ("words", "<u2"),
        ("time_ms", "<i8"),
        ("digest", "<u8"),
        ("sig", "<u2", (NUM_PERM,)),
        ("distinct", "<u2"),
        ("wset", "<u4", (WORD_SLOTS,)),
        ("crc", "<u4"),
    ]
)
RECORD_V2 = np.dtype(
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


def echoes(sentence: str, question: str) -> bool:
    """Whether a sentence only repeats the question's words (an echo of the user's text is not our output:
    registering it would refuse a document that asks the same question)."""
    words = set(normalise(sentence).split())
    return bool(words) and words <= set(normalise(question).split())


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


def digest(normalised: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=8).digest(), "little")


class Fingerprinter:
    """MinHash signatures over word bigrams (unigrams for a one-word text) and over the set of words, with cached
    permutations, and the rule that says when two fingerprints match."""

    def __init__(self, threshold: float, word_max_changed: int = 2, word_min_words: int = 6) -> None:
        from datasketch import MinHash

        self.threshold = threshold
        self.word_max_changed = word_max_changed
        self.word_min_words = word_min_words
        template = MinHash(num_perm=NUM_PERM, seed=SEED)
        self._minhash, self._perms, self._scheme = MinHash, template.permutations, template.scheme
        # Bands of 3 rows: a pair at Jaccard 0.5 is a candidate with probability 0.94, at 0.6 with 0.994 (the
        # bands datasketch picks for an even trade, 14 x 4 at 0.5 and 10 x 6 at 0.6, give 0.60 and 0.38).
        # Candidates are verified on the whole signature, so a wider net costs time, never a false match.
        self.rows = LSH_ROWS
        self.bands = NUM_PERM // LSH_ROWS

    def signature(self, normalised: str) -> np.ndarray:
        words = normalised.split()
        shingles = [f"{a} {b}".encode() for a, b in itertools.pairwise(words)] or [w.encode() for w in words]
        return self._sign(shingles)

    @staticmethod
    def word_set(normalised: str) -> tuple[np.ndarray, int]:
        """The sorted smallest WORD_SLOTS 32-bit hashes of the distinct words (0-padded), and how many there are."""
        hashes = sorted({_word_hash(w) for w in normalised.split()})
        slots = np.zeros(WORD_SLOTS, dtype=np.uint32)
        slots[: min(len(hashes), WORD_SLOTS)] = hashes[:WORD_SLOTS]
        return slots, len(hashes)

    def _sign(self, shingles: list[bytes]) -> np.ndarray:
        minhash = self._minhash(num_perm=NUM_PERM, seed=SEED, permutations=self._perms, scheme=self._scheme)
        minhash.update_batch(shingles)
        return (np.asarray(minhash.hashvalues) & 0xFFFF).astype(np.uint16)  # b-bit MinHash, b = 16

    def matched(self, bigram_j: float, shared: int, distinct: int, other_distinct: int) -> str | None:
        """How two fingerprints match ("bigrams" or "words"), or None. By words: both sets within WORD_SLOTS,
        sharing word_min_words or more, and differing by at most word_max_changed substitutions (twice as many
        words inserted or deleted)."""
        if bigram_j >= self.threshold:
            return "bigrams"
        if self.matched_by_words(np.array([shared]), distinct, np.array([other_distinct]))[0]:
            return "words"
        return None

    def matched_by_words(self, shared: np.ndarray, distinct: int, others: np.ndarray) -> np.ndarray:
        """The word rule of `matched`, for one set against many (`shared`: words in common with each)."""
        return (
            (shared >= self.word_min_words)
            & (np.maximum(others, distinct) <= WORD_SLOTS)
            & (others + distinct - 2 * shared <= 2 * self.word_max_changed)
        )

    @staticmethod
    def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
        """(n, bands) uint64 keys, one per LSH band; equal bands give equal keys (collisions are verified)."""
        n = sigs.shape[0]
        banded = sigs[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
        with np.errstate(over="ignore"):
            return (banded * _MIX[:rows]).sum(axis=2, dtype=np.uint64) ^ np.arange(bands, dtype=np.uint64)


@dataclass(frozen=True)
class Match:
    """A document sentence that matches released output: when that was first released, and how closely."""

    sentence: str
    released_ms: int
    similarity: float  # 1.0 for the same normalised text, else the Jaccard that matched (bigrams: estimated)
    how: str = "exact"  # exact, bigrams or words
    words: int = 0  # words of the document sentence (normalised)


@dataclass(frozen=True)
class FileState:
    """What the registry file holds, for a pin (`ingest.registry_guard`): whole records, the SHA-256 of the header
    and those records, the SHA-256 of the header and the first `pinned` (None when it holds fewer), and how many
    records after those fail their CRC."""

    exists: bool
    readable: bool
    records: int
    sha256: str
    prefix_sha256: str | None
    damaged: int


Quotable = Callable[[Sequence[str]], Sequence[str]]


class OutputRegistry:
    """The append-only registry of released output, shared between the serving process and ingest."""

    def __init__(
        self,
        path: Path,
        *,
        threshold: float = 0.5,
        word_max_changed: int = 2,
        word_min_words: int = 6,
        min_words: int = 4,
        quotable: Quotable | None = None,
    ) -> None:
        """`quotable(sentences)`: committed passages those sentences may quote, looked up when `record` is given
        no passages (an ungrounded answer that echoes the corpus is human text, not ours)."""
        self.path = path
        self.min_words = min_words
        self.quotable = quotable
        self.fingerprinter = Fingerprinter(threshold, word_max_changed, word_min_words)
        self._lock = threading.Lock()
        self._file_lock = FileLock(str(path) + ".lock")
        self._chunks: list[np.ndarray] = []  # records as read, joined only when a lookup needs them all
        self._joined = np.zeros(0, dtype=RECORD)
        self._count = 0
        self._offset = 0  # bytes of the file read so far (header and whole records)
        self._identity: tuple[int, int] | None = None
        self._digests: dict[int, int] = {}  # digest → first release time
        self._answers: set[int] = set()  # digests of whole answers
        self._bands: tuple[list[_Band], _WordIndex] | None = None  # bigram LSH bands, and the word index
        self.damaged = 0  # records whose CRC failed (skipped)

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return self._count

    def own_sentences(self, released: Sequence[str], passages: Sequence[str] = ()) -> list[str]:
        """The released sentences that are the service's own: long enough to register, and not quotations of
        `passages` (when none are given, of the committed passages `quotable` finds). Verbatim spans of a passage
        (an extractive answer) are quotations whatever their length."""
        long_enough = [s for s in released if len(normalise(s).split()) >= self.min_words]
        if not long_enough:
            return []
        if not passages and self.quotable is not None:
            try:
                passages = self.quotable(long_enough)
            except Exception:  # registering an echo is the lesser harm than releasing unregistered text
                log.exception("looking up the passages a released answer may quote failed; registering it all")
        quoted = _Quotations(passages, self.fingerprinter)
        return [s for s in long_enough if not quoted.covers(s)]

    def record(self, released: Sequence[str], passages: Sequence[str] = ()) -> int:
        """Register released sentences (and, if several, the whole answer) that are not quotations of `passages`
        (see `own_sentences`). Returns the number of records written. Call it before the text leaves: it fsyncs."""
        own = self.own_sentences(released, passages)
        texts = [(KIND_SENTENCE, s) for s in own] + ([(KIND_ANSWER, " ".join(own))] if len(own) > 1 else [])
        if not texts:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self._file_lock:
            self._sync()
            records = self.fingerprint(texts, int(time.time() * 1000), skip=self._digests.keys())
            if len(records):
                self._append(records.tobytes())
                self._sync()
        return len(records)

    def fingerprint(
        self, texts: Sequence[tuple[int, str]], now_ms: int, skip: Container[int] = frozenset()
    ) -> np.ndarray:
        """Records for (kind, text) pairs, without those whose digest is in `skip` (or repeated)."""
        fp = self.fingerprinter
        batch, seen = [], set[int]()
        for kind, text in texts:
            norm = normalise(text)
            key = digest(norm)
            if key not in seen and key not in skip:
                seen.add(key)
                words = min(len(norm.split()), 65535)
                wset, distinct = fp.word_set(norm)
                batch.append((kind, words, now_ms, key, fp.signature(norm), min(distinct, 65535), wset, 0))
        records = np.array(batch, dtype=RECORD)
        records["crc"] = _crcs(records)
        return records

    def append_records(self, records: np.ndarray) -> None:
        """Append records made by `fingerprint` (bulk fills, e.g. the benchmark's), under the file lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self._file_lock:
            self._sync()
            self._append(records.tobytes())

    def matches(self, text: str) -> list[Match]:
        """The sentences of `text` that match released output (exactly, or as near as the thresholds)."""
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
                    words = len(normalise(sentence).split())
                    if words >= self.min_words:
                        match = Match(sentence, whole.released_ms, whole.similarity, whole.how, words)
                        found.setdefault(sentence, match)
            return list(found.values())

    def file_state(self, pinned: int = 0) -> FileState:
        """The file as a pin sees it, read under the file lock (no append is half done)."""
        empty = hashlib.sha256(HEADER)
        with self._lock, self._file_lock:
            try:
                self._sync()  # rewrites a version-2 file first
            except ValueError:
                return FileState(True, False, 0, "", None, 0)
            try:
                with self.path.open("rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                return FileState(False, True, 0, empty.hexdigest(), empty.hexdigest() if pinned == 0 else None, 0)
        if not data.startswith(HEADER):
            return FileState(True, False, 0, "", None, 0)
        whole = _whole_size(len(data))
        records = (whole - len(HEADER)) // RECORD.itemsize
        end = len(HEADER) + pinned * RECORD.itemsize
        prefix = hashlib.sha256(data[:end]).hexdigest() if pinned <= records else None
        after = np.frombuffer(data[min(end, whole) : whole], dtype=RECORD)
        damaged = int((_crcs(after) != after["crc"]).sum())
        return FileState(True, True, records, hashlib.sha256(data[:whole]).hexdigest(), prefix, damaged)

    def _lookup(self, texts: list[str], *, answers_only: bool = False) -> list[Match]:
        candidates = [(s, n) for s, n in ((s, normalise(s)) for s in texts) if len(n.split()) >= self.min_words]
        found: list[Match] = []
        near: list[tuple[str, str]] = []
        for sentence, norm in candidates:
            released = self._digests.get(digest(norm))
            if released is not None and (not answers_only or digest(norm) in self._answers):
                found.append(Match(sentence, released, 1.0, "exact", len(norm.split())))
            else:
                near.append((sentence, norm))
        return found + (self._near(near, answers_only) if near else [])

    def _near(self, near: list[tuple[str, str]], answers_only: bool = False) -> list[Match]:
        fp = self.fingerprinter
        bands, words_index = self._index()
        sigs = np.stack([fp.signature(norm) for _, norm in near])
        keys = fp.band_keys(sigs, fp.bands, fp.rows)
        # Candidates: records sharing a band of the bigram MinHash (looked up for every sentence at once), or one
        # of the rarest words any record within the word rule must share (prefix filtering: none is missed).
        lows = np.stack([np.searchsorted(k, keys[:, b], side="left") for b, (k, _) in enumerate(bands)], axis=1)
        highs = np.stack([np.searchsorted(k, keys[:, b], side="right") for b, (k, _) in enumerate(bands)], axis=1)
        sets = [fp.word_set(norm) for _, norm in near]
        by_words = words_index.candidates(sets, fp.word_min_words, fp.word_max_changed)
        records = self._records
        found = []
        for i, (sentence, norm) in enumerate(near):
            parts = [bands[b][1][lows[i, b] : highs[i, b]] for b in np.flatnonzero(highs[i] > lows[i])]
            index = np.unique(np.concatenate([*parts, by_words[i]]))
            if answers_only:
                index = index[records["kind"][index] == KIND_ANSWER]
            if not len(index):
                continue
            wset, distinct = sets[i]
            bigram_j = (records["sig"][index] == sigs[i]).mean(axis=1)
            distincts = records["distinct"][index].astype(np.int64)
            shared = _shared_words(records["wset"][index], wset, distinct)
            word_j = shared / np.maximum(distincts + distinct - shared, 1)
            by_bigrams = bigram_j >= fp.threshold
            matched = by_bigrams | fp.matched_by_words(shared, distinct, distincts)
            if matched.any():
                j = int(np.argmax(np.where(matched, np.maximum(bigram_j, word_j), -1.0)))
                how = "bigrams" if by_bigrams[j] else "words"
                similarity = float(bigram_j[j] if how == "bigrams" else word_j[j])
                found.append(Match(sentence, int(records["time_ms"][index[j]]), similarity, how, len(norm.split())))
        return found

    @property
    def _records(self) -> np.ndarray:
        """All records read, joined once after each batch of syncs (a release appends without copying)."""
        if self._chunks:  # np.concatenate copies: the chunks read from the file are read-only views
            self._joined = np.concatenate([self._joined, *self._chunks] if len(self._joined) else self._chunks)
            self._chunks = []
        return self._joined

    def _index(self) -> tuple[list[_Band], _WordIndex]:
        """The bigram LSH bands and the word index, built when a lookup first needs them after records arrived."""
        if self._bands is None:
            fp, records = self.fingerprinter, self._records
            keys = fp.band_keys(records["sig"], fp.bands, fp.rows)
            self._bands = (_bands(keys, np.arange(len(records))), _WordIndex(records, fp.word_min_words))
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
        if self._offset == 0 and _header(self.path) == HEADER_V2:
            self._upgrade()
            self._sync()
            return
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
        good = _crcs(records) == records["crc"]
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

    def _upgrade(self) -> None:
        """Rewrite a version-2 file in this format (under the file lock; readers see a new file and reload)."""
        with self._file_lock:
            data = self.path.read_bytes()
            if not data.startswith(HEADER_V2):
                return
            body = data[len(HEADER_V2) :]
            old = np.frombuffer(body[: len(body) - len(body) % RECORD_V2.itemsize], dtype=RECORD_V2)
            old = old[_crcs(old) == old["crc"]]
            new = np.zeros(len(old), dtype=RECORD)
            for name in ("kind", "words", "time_ms", "sig"):
                new[name] = old[name]
            new["digest"] = np.frombuffer(old["digest"].tobytes(), dtype="<u8")  # all 8 bytes, NULs included
            new["distinct"] = 0  # no word set: exact and bigram matches only
            new["crc"] = _crcs(new)
            tmp = self.path.with_name(self.path.name + ".upgrade")
            with tmp.open("wb") as handle:
                handle.write(HEADER + new.tobytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            log.warning("rewrote %s in the registry's new format (%d records)", self.path, len(new))

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
    """A `ContentCheck` for the ingestor: `own_output_detected` when a document is made of released output.

    It is refused when `min_matches` of its sentences match, or `min_share` of them do, or any matching sentence
    has `long_words` words or more (one released sentence that long is no coincidence). A text whose digest is
    that of a live document (`admitted`: a new manifest for admitted human text) is not refused: our answers
    quoted it, it did not come from them. `guard` runs before each ingest (the registry's pin)."""

    def __init__(
        self,
        registry: OutputRegistry,
        *,
        min_matches: int = 2,
        min_share: float = 0.5,
        long_words: int = 12,
        admitted: Callable[[str], bool] | None = None,
        guard: Callable[[], object] | None = None,
    ) -> None:
        self.registry = registry
        self.min_matches = min_matches
        self.min_share = min_share
        self.long_words = long_words
        self.admitted = admitted
        self.guard = guard

    def before_ingest(self) -> None:
        """Raise (`registry_tampered`) if the registry is not what was pinned; ingest then writes nothing."""
        if self.guard is not None:
            self.guard()

    def check(self, text: str) -> tuple[str, str] | None:
        found = self.registry.matches(text)
        if not found:
            return None
        checked = sum(1 for s in sentences(text) if len(normalise(s).split()) >= self.registry.min_words)
        long = [m for m in found if m.words >= self.long_words]
        if len(found) < self.min_matches and len(found) < self.min_share * checked and not long:
            return None
        if self.admitted is not None and self.admitted(text):
            return None
        exact = sum(1 for m in found if m.how == "exact")
        first, last = min(m.released_ms for m in found), max(m.released_ms for m in found)
        longest = f"; the longest has {max(m.words for m in found)} words" if long else ""
        return (
            "own_output_detected",
            f"{len(found)} of {checked} sentences match answers this service released ({exact} exactly, "
            f"{len(found) - exact} nearly{longest}), released {_when(first)}"
            + ("" if first == last else f" to {_when(last)}"),
        )


class _Quotations:
    """The answer's passages, to tell a quotation (human text) from the service's own sentence."""

    def __init__(self, passages: Sequence[str], fingerprinter: Fingerprinter) -> None:
        self.padded = [f" {normalise(p)} " for p in passages]
        self.fingerprinter = fingerprinter
        self._passages = passages
        self._sentences: list[tuple[np.ndarray, np.ndarray, int, set[tuple[str, str]], list[str]]] | None = None

    def covers(self, sentence: str) -> bool:
        """Verbatim in a passage; nearly a span of one passage sentence (CONTAINED of its words matched in order
        within a stretch barely longer than it: a quote with a slip, such as a lost space); or matching a passage
        sentence as a document sentence would match a record (registering it would make its human source look
        like our output)."""
        norm = normalise(sentence)
        if any(f" {norm} " in passage for passage in self.padded):
            return True
        fp = self.fingerprinter
        if self._sentences is None:
            norms = [n for p in self._passages for n in (normalise(s) for s in sentences(p)) if n]
            self._sentences = [(fp.signature(n), *fp.word_set(n), _bigrams(n), n.split()) for n in norms]
        sig, (wset, distinct), grams = fp.signature(norm), fp.word_set(norm), _bigrams(norm)
        for other_sig, other_wset, other_distinct, other_grams, other in self._sentences:
            if grams and len(grams & other_grams) >= CONTAINED * len(grams) and _near_span(norm.split(), other):
                return True
            shared = int(_shared_words(other_wset[None, :], wset, distinct)[0])
            if fp.matched(float((other_sig == sig).mean()), shared, distinct, other_distinct) is not None:
                return True
        return False


class _WordIndex:
    """Word hash → the records whose word set holds it (sorted arrays), for prefix-filtered candidates."""

    def __init__(self, records: np.ndarray, min_words: int) -> None:
        # Only sets held whole (up to WORD_SLOTS words) and large enough to share min_words can match by words.
        usable = (records["distinct"] >= max(min_words, 1)) & (records["distinct"] <= WORD_SLOTS)
        rows, cols = np.nonzero((records["wset"] != 0) & usable[:, None])
        hashes = records["wset"][rows, cols]
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.records = hashes[order], rows[order].astype(np.int64)
        self.distinct = records["distinct"].astype(np.int64)

    def candidates(self, sets: list[tuple[np.ndarray, int]], min_words: int, max_changed: int) -> list[np.ndarray]:
        """For each word set, the records that can be within `max_changed` substitutions of it: such a record lacks
        at most 2·max_changed of its words, so it holds one of any 2·max_changed + 1 of them; the rarest are looked
        up. Records whose size rules it out are dropped. Sets outside [min_words, WORD_SLOTS] get none."""
        out = [np.zeros(0, dtype=np.int64) for _ in sets]
        asked = [i for i, (_, n) in enumerate(sets) if min_words <= n <= WORD_SLOTS]
        if not asked or not len(self.hashes):
            return out
        words = np.concatenate([sets[i][0][: sets[i][1]] for i in asked])
        lows = np.searchsorted(self.hashes, words, side="left")
        highs = np.searchsorted(self.hashes, words, side="right")
        start = 0
        for i in asked:
            n = sets[i][1]
            lo, hi = lows[start : start + n], highs[start : start + n]
            start += n
            rarest = np.argsort(hi - lo, kind="stable")[: 2 * max_changed + 1]
            found = np.unique(np.concatenate([self.records[lo[j] : hi[j]] for j in rarest]))
            out[i] = found[np.abs(self.distinct[found] - n) <= 2 * max_changed]
        return out


_Band = tuple[np.ndarray, np.ndarray]  # sorted keys, and the record index of each


def _bands(keys: np.ndarray, index: np.ndarray) -> list[_Band]:
    out = []
    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")
        out.append((keys[order, b], index[order]))
    return out


def _shared_words(wsets: np.ndarray, wset: np.ndarray, distinct: int) -> np.ndarray:
    """How many words each of `wsets` shares with `wset` (exact within WORD_SLOTS; 0-padding never counts)."""
    return np.isin(wsets, wset[: min(distinct, WORD_SLOTS)]).sum(axis=1).astype(np.int64)


def _near_span(words: list[str], other: list[str]) -> bool:
    """Whether CONTAINED of `words` match `other` in order, within a stretch of it at most two words longer (a
    span quoted with a slip, not phrases gathered from across a long sentence)."""
    blocks = [b for b in difflib.SequenceMatcher(None, words, other, autojunk=False).get_matching_blocks() if b.size]
    if not blocks or sum(b.size for b in blocks) < CONTAINED * len(words):
        return False
    return blocks[-1].b + blocks[-1].size - blocks[0].b <= len(words) + 2


def _bigrams(normalised: str) -> set[tuple[str, str]]:
    return set(itertools.pairwise(normalised.split()))


@functools.lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    """A nonzero 32-bit hash of a word (0 pads a word set)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") or 1


def _crcs(records: np.ndarray) -> np.ndarray:
    """The CRC32 of each record's bytes before its CRC field."""
    size = records.dtype.itemsize
    raw = records.tobytes()
    return np.array([zlib.crc32(raw[i : i + size - 4]) for i in range(0, len(raw), size)], dtype=np.uint32)


def _header(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(len(HEADER))
    except FileNotFoundError:
        return b""


def _whole_size(size: int) -> int:
    """The file size up to the last whole record (a crash can leave a torn one after it)."""
    if size < len(HEADER):
        return 0
    return size - (size - len(HEADER)) % RECORD.itemsize


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

"""The corpus report on small hand-made corpora: versions, diversity, near-duplicate floods, the human share."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from ingest.corpus_report import Baseline, ChunkText, build_report, latest_baseline, versions_of
from ingest.pipeline import Ingestor
from rag.cli import app
from rag.settings import CorpusReportSettings, Settings
from rag.wiring import build_store
from tests.conftest import pydoc_text
from tests.fakes import FakeEmbedder

TOPICS = ["assert", "pass", "del", "return", "global", "lambda", "while", "break", "continue", "import"]


class Corpus:
    """Ledger entries and chunk texts built by hand; each call to `run` is one ingest run an hour later."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.chunks: dict[str, ChunkText] = {}
        self.hour = 0
        self.embedder = FakeEmbedder()

    def run(self, docs: dict[str, list[str]], *, origin: str = "human", remove: tuple[str, ...] = ()) -> None:
        stamp = f"2026-01-01T{self.hour:02d}:00:00Z"
        self.hour += 1
        for doc_id in remove:
            self.entries.append({"index": len(self.entries), "time": stamp, "action": "remove", "doc_id": doc_id})
        for doc_id, texts in docs.items():
            hashes = []
            for text, vector in zip(texts, self.embedder.embed(texts), strict=True):
                digest = hashlib.sha256(text.encode()).hexdigest()
                self.chunks[digest] = ChunkText(text, vector)
                hashes.append(digest)
            self.entries.append(
                {
                    "index": len(self.entries),
                    "time": stamp,
                    "action": "add",
                    "doc_id": doc_id,
                    "origin": origin,
                    "chars": sum(map(len, texts)),
                    "chunks": len(texts),
                    "chunk_sha256": hashes,
                    "signer_name": "test-curator",
                    "license": "PSF-2.0",
                }
            )

    def report(self) -> dict[str, Any]:
        return build_report(self.entries, self.chunks, CorpusReportSettings(), human_floor=0.9)


def human_docs() -> dict[str, list[str]]:
    return {f"{t}.md": [pydoc_text(t)[:1500]] for t in TOPICS}


def near_copies(text: str, n: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    docs = {}
    for i in range(n):
        words = text.split()
        words[rng.randrange(len(words))] = f"variant{i}"
        docs[f"copy{i}.md"] = [" ".join(words)]
    return docs


def test_versions_are_bursts_of_entries_that_changed_the_store() -> None:
    corpus = Corpus()
    corpus.run({"a.md": ["alpha text"]})
    corpus.run({"b.md": ["beta text"]})
    corpus.entries.append({"index": 2, "time": "2026-01-01T05:00:00Z", "action": "reject", "doc_id": "c.md"})
    corpus.run({}, remove=("a.md",))
    states = versions_of(corpus.entries, gap_s=60)
    assert [sorted(live) for _, _, live in states] == [["a.md"], ["a.md", "b.md"], ["b.md"]]


def test_a_near_duplicate_flood_warns() -> None:
    corpus = Corpus()
    corpus.run(human_docs())
    corpus.run(near_copies(pydoc_text("while")[:1500], 8))
    first, second = corpus.report()["versions"]
    assert first["near_duplicate_rate"] == 0.0 and second["near_duplicate_rate"] > 0.4
    assert any("near-duplicate rate rose" in w for w in second["warnings"]), second["warnings"]


def test_a_homogenised_version_shows_lower_diversity_and_warns() -> None:
    corpus = Corpus()
    corpus.run(human_docs())
    template = "The {} statement is a statement. It is used in Python code. The {} statement is useful in code."
    bland = {f"{t}.md": [" ".join(template.format(t, t) for _ in range(12))] for t in TOPICS}
    corpus.run(bland)  # every document replaced by the same bland text about it
    first, second = corpus.report()["versions"]
    for figure in ("mattr", "distinct_1", "distinct_2", "tail_coverage", "embedding_spread"):
        assert second[figure] < first[figure], figure
    assert second["compression_ratio"] > first["compression_ratio"]
    assert any("homogenising" in w for w in second["warnings"]), second["warnings"]


def test_a_falling_human_share_warns_and_is_counted_by_origin() -> None:
    corpus = Corpus()
    corpus.run(human_docs())
    corpus.run({"edited.md": [pydoc_text("class")[:4000]]}, origin="human-edited-ai")
    first, second = corpus.report()["versions"]
    assert first["human_share"] == 1.0 and second["human_share"] < 0.9 and second["below_floor"]
    assert second["origins"] == {"human": 10, "human-edited-ai": 1}
    assert any("human share fell" in w for w in second["warnings"])


def test_a_steady_corpus_raises_no_warning_and_scores_are_summarised() -> None:
    corpus = Corpus()
    corpus.run({k: v for k, v in human_docs().items() if k < "m"})
    corpus.run({k: v for k, v in human_docs().items() if k >= "m"})
    for entry, score in zip(corpus.entries, [0.1, 0.2, 0.9], strict=False):
        entry["synthetic"] = {"score": score, "flagged": score > 0.5}
    report = corpus.report()
    assert report["warnings"] == []
    assert report["versions"][-1]["synthetic"]["scored"] == 3 and report["versions"][-1]["synthetic"]["flagged"] == 1


def test_cli_report_reads_the_ledger_and_store(settings: Settings, corpus: Path, tmp_path: Path) -> None:
    Ingestor(settings, build_store(settings), FakeEmbedder()).ingest([corpus])
    out = CliRunner().invoke(app, ["corpus", "report", "--json", "--html", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    (version,) = report["versions"]
    assert version["documents"] == 3 and version["text_coverage"] == 1.0 and version["embedding_spread"] > 0
    assert "<img" in (tmp_path / "r.html").read_text()


def chunked_human_docs(topics: list[str], size: int = 700) -> dict[str, list[str]]:
    """Several chunks per pydoc topic (a bigger base corpus, so one near copy moves the rate only a little)."""
    docs = {}
    for topic in topics:
        text = pydoc_text(topic)
        docs[f"{topic}.md"] = [text[i : i + size] for i in range(0, min(len(text), 4 * size), size)]
    return docs


BIG = ["assert", "pass", "del", "return", "global", "lambda", "while", "break", "continue", "import", "class", "for"]
BIG += ["if", "try", "with", "raise", "yield", "nonlocal", "integers", "strings"]


def test_a_slow_flood_of_near_copies_warns_though_no_single_version_does() -> None:
    corpus = Corpus()
    corpus.run(chunked_human_docs(BIG))
    source = pydoc_text("while")[:700]
    for step in range(6):  # one near copy per ingest run
        words = source.split()
        words[(7 * step + 3) % len(words)] = f"variant{step}"
        corpus.run({f"copy{step}.md": [" ".join(words)]})
    report = corpus.report()
    rates = [v["near_duplicate_rate"] for v in report["versions"]]
    steps = [b - a for a, b in itertools.pairwise(rates)]
    assert max(steps) < CorpusReportSettings().max_near_duplicate_rise  # no version alone raises the alarm
    assert rates[-1] - rates[0] > CorpusReportSettings().max_drift_near_duplicate_rise
    assert not any("near-duplicate rate rose" in w and "since" not in w for w in report["warnings"])
    flood = [w for w in report["warnings"] if "slow flood" in w]
    assert flood and any("since the baseline (version 1" in w for w in flood), report["warnings"]
    tight = CorpusReportSettings(window=3, max_drift_near_duplicate_rise=0.05)
    window = build_report(corpus.entries, corpus.chunks, tight, human_floor=0.9)
    assert any("since version 4" in w and "slow flood" in w for w in window["versions"][-1]["warnings"])


def test_tail_loss_against_a_pinned_baseline_warns() -> None:
    corpus = Corpus()
    corpus.run(chunked_human_docs(BIG))
    baseline = latest_baseline(corpus.entries, corpus.chunks, CorpusReportSettings(), human_floor=0.9)
    assert baseline is not None and baseline.pinned and len(baseline.tail) > 500
    removed = ("class", "try", "raise", "yield")
    for topic in removed:  # documents lost one run at a time
        corpus.run({}, remove=(f"{topic}.md",))
    lost = {f"{t}.md" for t in removed}
    gone = {h for e in corpus.entries if e.get("doc_id") in lost for h in e.get("chunk_sha256", [])}
    held = {h: c for h, c in corpus.chunks.items() if h not in gone}  # the store no longer holds the removed texts
    pinned = Baseline.load(json.loads(json.dumps(baseline.as_dict())))
    report = build_report(corpus.entries, held, CorpusReportSettings(), human_floor=0.9, baseline=pinned)
    assert report["baseline"]["pinned"] and report["baseline"]["version"] == 1
    kept = [v["baseline_tail_kept"] for v in report["versions"]]
    assert kept[-1] < 0.9
    assert any("tail loss" in w for w in report["versions"][-1]["warnings"]), report["warnings"]
    # Without the pinned baseline the lost words cannot be read back: the first version's tail is what is left.
    unpinned = build_report(corpus.entries, held, CorpusReportSettings(), human_floor=0.9)
    assert not any("tail loss" in w for w in unpinned["warnings"])


def test_cli_pins_a_baseline_and_compares_with_it(settings: Settings, corpus: Path, tmp_path: Path) -> None:
    Ingestor(settings, build_store(settings), FakeEmbedder()).ingest([corpus])
    out = CliRunner().invoke(app, ["corpus", "report", "--json", "--pin-baseline"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["baseline"] == {**json.loads(out.output)["baseline"], "pinned": True, "version": 1}
    assert json.loads((settings.data_dir / "corpus_baseline.json").read_text())["tail"]


def test_a_lost_topic_shows_in_the_embedding_space_against_a_pinned_baseline() -> None:
    """Four topics, each a tight group of chunks in its own direction; one topic removed: the version covers
    fewer of the baseline's topic clusters and warns, though a steady corpus covers them all."""
    rng = np.random.default_rng(0)
    directions = np.eye(32)[:4]
    corpus = Corpus()
    docs = {f"topic{t}-{n}.md": [f"{TOPICS[t]} {n} " + pydoc_text(TOPICS[t])[:400]] for t in range(4) for n in range(8)}
    corpus.run(docs)
    for entry in corpus.entries:
        topic = int(entry["doc_id"][5])
        for digest in entry["chunk_sha256"]:
            vector = directions[topic] + 0.05 * rng.standard_normal(32)
            corpus.chunks[digest] = ChunkText(corpus.chunks[digest].text, [float(x) for x in vector])
    baseline = latest_baseline(corpus.entries, corpus.chunks, CorpusReportSettings(), human_floor=0.9)
    assert baseline is not None and len(baseline.centroids) == 8
    pinned = Baseline.load(json.loads(json.dumps(baseline.as_dict())))
    steady = build_report(corpus.entries, corpus.chunks, CorpusReportSettings(), human_floor=0.9, baseline=pinned)
    assert steady["versions"][-1]["topic_clusters_covered"] == 1.0 and not steady["warnings"]

    corpus.run({}, remove=tuple(f"topic3-{n}.md" for n in range(8)))
    gone = {h for e in corpus.entries if e["doc_id"].startswith("topic3") for h in e.get("chunk_sha256", [])}
    held = {h: c for h, c in corpus.chunks.items() if h not in gone}
    report = build_report(corpus.entries, held, CorpusReportSettings(), human_floor=0.9, baseline=pinned)
    covered = report["versions"][-1]["topic_clusters_covered"]
    assert covered is not None and covered <= 0.875
    assert any("topic clusters" in w and "whole topics lost" in w for w in report["versions"][-1]["warnings"])

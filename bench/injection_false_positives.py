"""What the prompt-injection defence costs ordinary text, and what it catches (`rag/injection/`).

    python bench/injection_false_positives.py [--squad /work/shared/data/squad_dev_v1.1.json]

For the default corpus (the 79 pydoc topics, whole and as the 504 chunks ingest makes), SQuAD dev passages
(evaluation data, read here only) and the standard library's docstrings: the units set aside as instructions,
the texts the fence changes, and the prose sentences that would be refused if released whole with a citation
mark. For SQuAD also: gold sentences extract mode would refuse to quote (`relays_an_order`, `labelled_span`).
Then the ordinary sentences and the adversarial phrasings of `tests/injection_cases.py`. Prints figures only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import io
import json
import pkgutil
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

# The repository ahead of this folder, whose ingest.py would shadow the `ingest` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.answering import PROMPT_TEXTS
from rag.grounding import split_sentences
from rag.injection import (
    changed_offsets,
    instruction_kind,
    instruction_sentences,
    labelled_span,
    relays_an_order,
    release_problem,
    units,
    without_instructions,
)
from rag.reader.evidence import prose_sentences


def scan(name: str, texts: list[str], *, release: bool = True, examples: int = 4) -> None:
    kinds: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    shown: list[str] = []
    count = fenced = sentences = 0
    for text in texts:
        pieces = units(text)
        count += len(pieces)
        for piece in pieces:
            kind = instruction_kind(piece)
            if kind:
                kinds[kind] += 1
                shown.append(f"set aside ({kind}): {piece[:140]!r}")
        fenced += bool(changed_offsets(text))
        if not release:
            continue
        usable, aside = [without_instructions(text)], instruction_sentences(text)
        for sentence in prose_sentences(text):
            sentences += 1
            body = sentence.rstrip()
            end = body[-1] if body[-1:] in (".", "!", "?") else ""
            marked = f"{body[: len(body) - len(end)]} [1]{end}"
            problem = release_problem(marked, usable, {1}, PROMPT_TEXTS, aside)
            if problem:
                refused[problem] += 1
                shown.append(f"refused ({problem}): {marked[:140]!r}")
    aside = f"set aside {sum(kinds.values())} {dict(kinds)}"
    line = f"{name}: {len(texts)} texts, {count} units, {aside}, fence changes {fenced}"
    if release:
        line += f"; {sentences} prose sentences, refused if released {sum(refused.values())} {dict(refused)}"
    print(line)
    for example in shown[:examples]:
        print("   ", example)


def pydoc_texts() -> tuple[list[str], list[str]]:
    from pydoc_data.topics import topics

    from ingest.chunking import Chunker
    from ingest.pydoc_import import rst_headings_to_markdown

    chunker = Chunker(1200, 120)
    chunks = [c.text for t in topics.values() for c in chunker.split(rst_headings_to_markdown(t), markdown=True)]
    return list(topics.values()), chunks


def squad(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    paragraphs = [p for article in data["data"] for p in article["paragraphs"]]
    scan("SQuAD dev passages", [p["context"] for p in paragraphs])
    orders = labels = asked = 0
    shown = []
    for paragraph in paragraphs:
        sentences = split_sentences(" ".join(paragraph["context"].split()))
        for qa in paragraph["qas"]:
            answer = qa["answers"][0]["text"]
            sentence = next((s for s in sentences if answer in s), "")
            if not sentence:
                continue
            asked += 1
            if relays_an_order(sentence, qa["question"]):
                orders += 1
                shown.append(f"order: {qa['question']!r} / {sentence[:120]!r}")
            labels += labelled_span(answer, sentence)
    print(f"SQuAD dev gold sentences: {asked} questions, refused as an order {orders}, as a labelled span {labels}")
    for example in shown[:6]:
        print("   ", example)


def docstrings() -> Iterable[str]:
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip"}
    seen: set[str] = set()
    for module in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if module.name.startswith("_") or module.name in skip or module.name not in sys.stdlib_module_names:
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                loaded = importlib.import_module(module.name)
        except BaseException:  # a module that cannot load here is skipped
            continue
        for obj in [loaded, *vars(loaded).values()]:
            doc = getattr(obj, "__doc__", None)
            mine = obj is loaded or getattr(obj, "__module__", None) == module.name
            if isinstance(doc, str) and len(doc) > 40 and mine and doc not in seen:
                seen.add(doc)
                yield doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--squad", type=Path, default=Path("/work/shared/data/squad_dev_v1.1.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    topics, chunks = pydoc_texts()
    scan("default corpus, 79 topics", topics)
    scan("default corpus, chunks", chunks)
    if args.squad.exists():
        squad(args.squad)
    scan("stdlib docstrings", list(docstrings()), release=False, examples=8)
    from tests.injection_cases import MISSED, ORDINARY, PHRASINGS

    ordinary = [s for s in ORDINARY if instruction_kind(s)]
    print(f"ordinary sentences: {len(ORDINARY)}, set aside {len(ordinary)}: {ordinary}")
    caught = sum(bool(instruction_kind(s)) for s in PHRASINGS.values())
    print(
        f"adversarial phrasings: {len(PHRASINGS) + len(MISSED)}, set aside {caught} (the {len(MISSED)} known misses: "
        f"{sorted(MISSED)})"
    )


if __name__ == "__main__":
    main()

"""The evidence the extractive reader reads: the prose sentences of the passages that share most words
with the question.

A documentation chunk holds more than prose: a Markdown heading ("# The "global" statement"), an indented
grammar or code block ("global_stmt ::= ..."). Joined with the sentence after them they made one long
"sentence" that shares the question's words, and the reader then quoted the grammar symbol
("global_stmt") as the answer, or released the heading with the sentence. Headings and indented blocks
are titles and code, not statements: they are left out, and sentences never run across paragraphs.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.grounding import content_words, split_sentences


def prose_sentences(passage: str) -> list[str]:
    """The sentences of a passage's prose: runs of lines broken by blank lines and by heading lines (`#`,
    or an underline of punctuation), indented lines (code, grammar) and grammar productions (`::=`),
    which are left out. Stored chunks may have lost their blank lines and indentation: the structural
    lines still break the runs, so a heading never joins the sentence after it."""
    sentences: list[str] = []
    run: list[str] = []
    for line in [*passage.splitlines(), ""]:
        if line.strip() and not _structural(line):
            run.append(line)
            continue
        if run:
            sentences.extend(split_sentences(" ".join(" ".join(run).split())))
            run = []
    return sentences


def _structural(line: str) -> bool:
    """A heading (`#`, or an underline of punctuation), an indented line, or a grammar production."""
    text = line.strip()
    underline = len(text) >= 3 and not any(ch.isalnum() for ch in text)
    return text.startswith("#") or underline or line.startswith(("   ", "\t")) or "::=" in line


def select_prose_evidence(question: str, passages: Sequence[str], count: int) -> list[str]:
    """One string per passage (same numbering; "" when none of its sentences was chosen): the `count`
    prose sentences sharing most content words with the question, in their original order. Ties prefer
    the better-ranked passage (0.3 of a word per rank)."""
    asked = set(content_words(question))
    scored = []
    for n, passage in enumerate(passages):
        for i, sentence in enumerate(prose_sentences(passage)):
            scored.append((len(asked & set(content_words(sentence))) - 0.3 * n, n, i, sentence))
    chosen = sorted(sorted(scored, key=lambda item: -item[0])[:count], key=lambda item: (item[1], item[2]))
    return [" ".join(s for _, m, _, s in chosen if m == n) for n in range(len(passages))]

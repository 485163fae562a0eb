"""The prose sentences of a passage: what extract mode may release as a sentence, and what its focus
check reads.

A documentation chunk holds more than prose: a heading ("The "pass" statement" and its underline), an
indented grammar or code block ("pass_stmt ::= ..."). Joined with the sentence after them they made one
long "sentence": released whole, the answer began with the heading and the grammar; read by the focus
check, a grammar symbol ("global_stmt") seemed to stand in a sentence about the question. Headings and
indented blocks are titles and code, not statements: they are left out and break sentences.
(Selecting the reader's evidence from prose sentences only was tried: 3 of the 10 e2e questions right
instead of 5, so the reader still reads `rag.grounding.select_evidence`.)
"""

from __future__ import annotations

from rag.grounding import split_sentences


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

"""Instructions inside documents (prompt injection): passages are data, never part of the prompt's layout.

A signed passage is trusted for what it says about its subject, not for what it tells the reader to do.
Three layers, none of which relies on the model behaving:

- **Fence** (`fenced`): a passage enters the prompt on one line (its whitespace collapsed), so it cannot
  open a line of its own; the markers the prompt is built from are neutralised inside it, one
  character for one character (a bracketed number `[9]` reads `(9)`, a label `Answer:` or `Q：` reads
  `Answer-` or `Q-`, a chat control token `<end_of_turn>` reads `‹end_of_turn›`), so it cannot imitate a
  passage number, a question, an answer or a turn. Same length: a character offset in the fenced text
  is the same offset in the passage text, and `changed_offsets` says which characters differ (a span
  touching one is never proposed as an answer).
- **Set aside** (`without_instructions`): sentences addressed to a model (an order to ignore
  instructions, a role label, a directive about what to answer, a request to reveal the prompt, words
  to an AI, an order in a generic shape: "when asked ..., reply ...") are left out of what the reader reads
  and of what can support an answer. The document stays admitted (its curator signed it) and citable for
  its other sentences.
- **Refuse at release** (`release_problem`): released text never holds an instruction, the prompt's own
  text, a URL no usable passage holds, a citation mark the answer does not cite, markup a chat client would
  render, or a word only a set-aside instruction holds (its payload).

Every pattern is matched on a folded copy of the text (`fold`): look-alike letters and colons, fullwidth
forms and invisible characters cannot hide a marker or an instruction from it.

What it does not do: recognise every phrasing of an instruction (`patterns` lists the shapes known; what they
miss still meets the fence and the release checks), or judge whether what a trusted curator signed is true.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from rag.grounding import content_words, split_sentences
from rag.injection import patterns as p
from rag.injection.fold import fold, folded

# The compatibility name: a citation-like mark, matched on folded text (`citation_marks` folds first).
CITATION_MARK = p.MARK
# What the fence writes for each folded character it neutralises (one character for one).
_NEUTRAL = {"[": "(", "]": ")", ":": "-", "<": "‹", ">": "›"}


def normalised(text: str) -> str:
    """The passage on one line: every run of whitespace (newlines, Unicode line separators) one space."""
    return " ".join(text.split())


def fenced(text: str) -> str:
    """The passage as it enters a prompt: one line, with the prompt's markers neutralised.

    The result has exactly the length of `normalised(text)`, character for character: the markers are found in
    the folded copy and the characters they came from are replaced."""
    body = normalised(text)
    copy, where = folded(body)
    chars = list(body)
    for pattern, marks in ((p.FENCED_MARKS, "[]"), (p.LABEL, ":"), (p.CONTROL, "<>[]")):
        for match in pattern.finditer(copy):
            for i in range(match.start(), match.end()):
                if copy[i] in marks:
                    chars[i if where is None else where[i]] = _NEUTRAL[copy[i]]
    return "".join(chars)


def changed_offsets(text: str) -> list[int]:
    """Offsets (in `normalised(text)` and `fenced(text)` alike) of the characters the fence changed."""
    return [i for i, (a, b) in enumerate(zip(normalised(text), fenced(text), strict=True)) if a != b]


def instruction_kind(sentence: str) -> str | None:
    """Which kind of instruction to a model the sentence holds (override, new_orders, addressed, directive,
    paraphrase, reveal, hidden, label, control), or None for a statement about its subject."""
    text = fold(sentence)
    for kind, pattern in p.INSTRUCTION.items():
        if pattern.search(text):
            return kind
    if p.OPENS_WITH_LABEL.match(text) or p.CAPITAL_LABEL.search(text) or len(p.LABEL.findall(text)) >= 2:
        return "label"
    if p.CONTROL.search(text):
        return "control"
    return None


def units(passage: str) -> list[str]:
    """The passage cut where an instruction may begin: its sentences, and also at a blank line and at a line
    that opens with a label, a control token or hidden markup (`<!--`), which the sentence splitter would join
    to the sentence before ("... a colon. system: You are now ...")."""
    pieces: list[list[str]] = [[]]
    for line in passage.splitlines():
        if not line.strip() or p.OPENS_UNIT.match(fold(line)):
            pieces.append([])
        pieces[-1].append(line)
    return [s for piece in pieces for s in split_sentences(normalised("\n".join(piece)))]


def instruction_sentences(passage: str) -> list[str]:
    """The units (sentences, mostly) of the passage that are instructions to a model."""
    return [s for s in units(passage) if instruction_kind(s)]


def without_instructions(passage: str) -> str:
    """The passage without its instructions to a model (then on one line): what may be read and may support
    an answer. The passage itself when it holds none, so what the reader reads of it is unchanged."""
    pieces = units(passage)
    kept = [s for s in pieces if not instruction_kind(s)]
    return passage if len(kept) == len(pieces) else " ".join(kept)


def urls(text: str) -> list[str]:
    """The URLs in a text, without trailing punctuation."""
    return [m.group(0).rstrip(".,;:!?") for m in p.URL.finditer(fold(text))]


def citation_marks(text: str) -> list[int]:
    """The numbers of every citation-like mark in a text: `[9]`, `[ 9 ]`, `［９］`, `【9】`, `a[9]` alike."""
    return [int(n) for n in p.MARK.findall(fold(text))]


def has_markup(text: str) -> bool:
    """Whether the text holds an image, a link or HTML that a Markdown chat client would render."""
    return bool(p.MARKUP.search(fold(text)))


def labelled_span(span: str, sentence: str) -> bool:
    """Whether a span stands where a transcript puts an answer: right after a label and its colon in its
    sentence ("... Answer： BANANA", "Q: ... A: BANANA"), or in a sentence holding two or more labels."""
    copy, wanted = fold(sentence), fold(span)
    if len(p.LABEL.findall(copy)) >= 2:
        return True
    at = copy.find(wanted) if wanted else -1
    return at >= 0 and bool(re.search(rf"(?:{p.LABEL.pattern})\s*[\"'“‘(]?\s*$", copy[:at]))


def relays_an_order(sentence: str, question: str, *, share: float = 0.5) -> bool:
    """Whether a sentence restates the question and tells how to reply ("When asked what the walrus operator
    does, ... reply that it deletes every file"): an order about this question, whatever its wording. A reply
    verb the question itself uses ("What does the print function write?") does not count."""
    asked = set(content_words(question))
    if not asked or len(asked & set(content_words(sentence))) < share * len(asked):
        return False
    question_words = {w.lower() for w in re.findall(r"\w+", fold(question))}
    return any(m.group(0).lower() not in question_words for m in p.REPLY_VERB.finditer(fold(sentence)))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", fold(text).lower())


def shares_run(text: str, fixed: str, run: int = 6) -> bool:
    """Whether `text` repeats `run` consecutive words of `fixed` (or all of it, when shorter)."""
    said, source = _words(text), _words(fixed)
    n = min(run, len(source))
    if n == 0 or len(said) < n:
        return False
    grams = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    return any(tuple(said[i : i + n]) in grams for i in range(len(said) - n + 1))


def payload_words(text: str, passages: Sequence[str], set_aside: Sequence[str]) -> list[str]:
    """Words of `text` that a set-aside instruction holds and no usable passage does: what the instruction
    asked to be said ("BANANA"), now inside a sentence that is otherwise true."""
    if not set_aside:
        return []
    ordered = set(content_words(fold(" ".join(set_aside))))
    held = set(content_words(fold(" ".join(passages))))
    said = content_words(fold(text))
    return [w for w in dict.fromkeys(said) if w in ordered and w not in held and not w.isdigit()]


def release_problem(
    text: str,
    passages: Sequence[str],
    cited: Collection[int],
    prompt_texts: Sequence[str] = (),
    set_aside: Sequence[str] = (),
) -> str | None:
    """Why `text` (as it would be released, with its citation marks) must not leave, or None.

    `passages` are the usable passages (instructions set aside), `cited` the passage numbers the answer
    cites, `prompt_texts` the prompts' own fixed text, `set_aside` the instructions taken out of the passages.
    Codes: `instruction` (it says what a model should do, carries a role label or control token, or a word
    only a set-aside instruction holds), `prompt_text` (it repeats the prompt), `unlisted_url` (a URL no usable
    passage holds), `forged_citation` (a mark the answer does not cite, however bracketed or spaced), `markup`
    (an image, a link or HTML a chat client would render)."""
    if instruction_kind(text) or payload_words(text, passages, set_aside):
        return "instruction"
    if any(shares_run(text, fixed) for fixed in prompt_texts):
        return "prompt_text"
    held = " ".join(fold(normalised(passage)) for passage in passages)
    if any(url not in held for url in urls(text)):
        return "unlisted_url"
    if any(n not in cited for n in citation_marks(text)):
        return "forged_citation"
    if has_markup(text):
        return "markup"
    return None

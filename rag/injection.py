"""Instructions inside documents (prompt injection): passages are data, never part of the prompt's layout.

A signed passage is trusted for what it says about its subject, not for what it tells the reader to do.
Three layers, none of which relies on the model behaving:

- **Fence** (`fenced`): a passage enters the prompt on one line (its whitespace collapsed), so it cannot
  open a line of its own; the markers the prompt is built from are neutralised inside it, one
  character for one character (a bracketed number `[9]` reads `(9)`, a label `Answer:` reads
  `Answer-`, a chat control token `<end_of_turn>` reads `‹end_of_turn›`), so it cannot imitate a
  passage number, a question, an answer or a turn. Same length: a character offset in the fenced text
  is the same offset in the passage text, and `changed_offsets` says which characters differ (a span
  touching one is never proposed as an answer).
- **Set aside** (`without_instructions`): sentences addressed to a model (an order to ignore
  instructions, a role label, a directive about what to answer, a request to reveal the prompt, words
  to an AI) are left out of what the reader reads and of what can support an answer. The document stays
  admitted (its curator signed it) and citable for its other sentences.
- **Refuse at release** (`release_problem`): released text never holds an instruction, the prompt's own
  text, a URL no usable passage holds, or a citation mark the answer does not cite.

What it does not do: recognise every phrasing of an instruction (the patterns below are English and
known shapes; what they miss still meets the fence and the release checks), or judge whether what a
trusted curator signed is true.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from rag.grounding import split_sentences

# A citation-like mark: a bracketed number not attached to a word or closing bracket (`a[9]` is a subscript).
CITATION_MARK = re.compile(r"(?<![\w\])])\[(\d{1,4})\]")
# The labels the prompts are made of, and chat roles: a passage must not start a question, an answer or a turn.
_LABEL = re.compile(
    r"\b(?:question|answer|context|system|assistant|user|human|developer|model|ai|bot|instructions?|prompt)"
    r"\s*(:)",
    re.IGNORECASE,
)
# As an instruction: a label opening the sentence, or a capitalised one anywhere ("Answer: ..."); prose says
# "the question: who ..." in lower case.
_STARTS_WITH_LABEL = re.compile(r"^\W{0,3}" + _LABEL.pattern, re.IGNORECASE)
_CAPITAL_LABEL = re.compile(
    r"\b(?:Question|Answer|Context|System|Assistant|User|Human|Developer|Model|AI|Bot|Instructions?|Prompt|"
    r"QUESTION|ANSWER|CONTEXT|SYSTEM|ASSISTANT|USER|HUMAN|DEVELOPER|MODEL|BOT|INSTRUCTIONS?|PROMPT)\s*:"
)
# Chat control tokens in text form (Gemma, ChatML, Llama). The local tokenizers are also told not to
# parse control tokens out of the prompt (`split_special_tokens`); this covers remote servers too.
_CONTROL = re.compile(
    r"<\|[^<>|\s]{1,40}\|>|"
    r"</?(?:s|bos|eos|pad|unk|mask|start_of_turn|end_of_turn|start_of_image|end_of_image)>|"
    r"\[/?INST\]|<<\s*/?SYS\s*>>",
    re.IGNORECASE,
)
_OPENS_UNIT = re.compile(r"^\W{0,3}(?:" + _LABEL.pattern + r"|<!--|-->|" + _CONTROL.pattern + ")", re.IGNORECASE)
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`)\]]+|\bwww\.[^\s<>\"'`)\]]+", re.IGNORECASE)

_MODEL = r"(?:ai|a\.i\.|assistant|chat\s?bot|bot|language\s+model|llm|model|gpt|reader\s+model|answering\s+system)"
_PAYLOAD_OPEN = r"[\"'“‘`«]"
# fmt: off
_INSTRUCTION = {
    # "Ignore the previous instructions", "disregard your rules", "forget everything above"
    "override": re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass|skip)\b(?:\s+\S+){0,4}?\s+"
        r"(?:instructions?|prompts?|rules|directions|guidelines|directives|guardrails|everything\s+(?:above|before)|"
        r"(?:all|any)\s+(?:previous|prior|earlier)\b)",
        re.IGNORECASE,
    ),
    # "New instructions:", "From now on, answer ..."
    "new_orders": re.compile(
        r"\b(?:new|updated|real|actual|hidden|secret)\s+instructions?\b|\b(?:new|updated)\s+(?:orders|rules|task)\s*:|"
        r"\bfrom\s+now\s+on\b[^.]{0,40}\b(?:answer|respond|reply|say|write|output|append|cite|include)",
        re.IGNORECASE,
    ),
    # Words to an AI: "Note to the assistant", "Dear language model", "you are now an ..."
    "addressed": re.compile(
        rf"\b(?:note|message|attention|hey|dear|hello)\s*(?:to|for)?\s*(?:the\s+|any\s+|all\s+)?{_MODEL}s?\b|"
        rf"\b(?:if|when|whenever)\s+(?:you\s+are|you're)\s+(?:an?\s+)?{_MODEL}\b|"
        rf"\b(?:as\s+an?|you\s+are\s+(?:now\s+)?(?:an?\s+)?){_MODEL}\b|"
        r"\byou\s+are\s+now\s+(?:in|an?|the|acting|operating|running)\b|"
        rf"\b{_MODEL}s?\s+(?:reading|processing|answering|summari[sz]ing)\s+(?:this|these)\b",
        re.IGNORECASE,
    ),
    # What to answer: "answer 'BANANA'", "reply with the single word ...", "the answer must be a URL"
    "directive": re.compile(
        rf"\b(?:answer|respond|reply|say|output)\b(?:\s+(?:only|just|simply|exactly|with|using|by\s+saying|"
        rf"the|a|single|one|word|phrase|string|text|following|this|that)){{0,5}}\s*:?\s*{_PAYLOAD_OPEN}|"
        r"\b(?:your|the|every|each|any)\s+(?:final\s+)?(?:answer|response|reply|output)s?\b[^.]{0,60}?"
        r"\b(?:must|should|shall|has\s+to|have\s+to|needs?\s+to|is\s+required\s+to|will\s+always)\s+"
        r"(?:be|contain|include|start|begin|end|say|cite|read|consist)\b|"
        r"\b(?:always|only)\s+(?:answer|respond|reply|cite|say|append|output)\b|"
        r"\b(?:answer|respond|reply)\s+(?:to\s+)?(?:every|each|all|any)\s+(?:questions?|requests?|prompts?)\b|"
        r"\b(?:answer|respond|reply|say)\b[^.]{0,60}?\b(?:with|using)\s+(?:the|a|one)\s+(?:single\s+)?"
        r"(?:word|phrase|string|url|link|sentence)\b|"
        r"\b(?:cite|citing|quote)\s+(?:source|passage|reference|document)s?\s*\[?\d+\]?",
        re.IGNORECASE,
    ),
    # "reveal the system prompt", "repeat the text above", "print your instructions"
    "reveal": re.compile(
        r"\b(?:reveal|repeat|print|show|output|disclose|leak|display|recite|echo|dump)\b(?:\s+\S+){0,5}?\s+"
        r"(?:(?:system|hidden|original|full|whole|entire|initial)\s+prompt|(?:your|the)\s+prompt|"
        r"(?:your|the|all)\s+instructions|(?:the\s+)?(?:text|words|everything)\s+(?:above|before)\b)",
        re.IGNORECASE,
    ),
}
# fmt: on


def normalised(text: str) -> str:
    """The passage on one line: every run of whitespace (newlines, Unicode line separators) one space."""
    return " ".join(text.split())


def fenced(text: str) -> str:
    """The passage as it enters a prompt: one line, with the prompt's markers neutralised.

    The result has exactly the length of `normalised(text)`, character for character."""
    body = normalised(text)
    body = CITATION_MARK.sub(lambda m: f"({m.group(1)})", body)
    body = _LABEL.sub(lambda m: m.group(0)[:-1] + "-", body)
    return _CONTROL.sub(lambda m: m.group(0).replace("<", "‹").replace(">", "›").replace("[", "(").replace("]", ")"),
                        body)  # fmt: skip


def changed_offsets(text: str) -> list[int]:
    """Offsets (in `normalised(text)` and `fenced(text)` alike) of the characters the fence changed."""
    return [i for i, (a, b) in enumerate(zip(normalised(text), fenced(text), strict=True)) if a != b]


def instruction_kind(sentence: str) -> str | None:
    """Which kind of instruction to a model the sentence holds (override, new_orders, addressed, directive,
    reveal, label, control), or None for a statement about its subject."""
    for kind, pattern in _INSTRUCTION.items():
        if pattern.search(sentence):
            return kind
    if _STARTS_WITH_LABEL.match(sentence) or _CAPITAL_LABEL.search(sentence):
        return "label"
    if _CONTROL.search(sentence):
        return "control"
    return None


def units(passage: str) -> list[str]:
    """The passage cut where an instruction may begin: its sentences, and also at a blank line and at a line
    that opens with a label, a control token or markup (`<!--`), which the sentence splitter would join
    to the sentence before ("... a colon. system: You are now ...")."""
    pieces: list[list[str]] = [[]]
    for line in passage.splitlines():
        if not line.strip() or _OPENS_UNIT.match(line):
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
    return [m.group(0).rstrip(".,;:!?") for m in _URL.finditer(text)]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def shares_run(text: str, fixed: str, run: int = 6) -> bool:
    """Whether `text` repeats `run` consecutive words of `fixed` (or all of it, when shorter)."""
    said, source = _words(text), _words(fixed)
    n = min(run, len(source))
    if n == 0 or len(said) < n:
        return False
    grams = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    return any(tuple(said[i : i + n]) in grams for i in range(len(said) - n + 1))


def release_problem(
    text: str, passages: Sequence[str], cited: Collection[int], prompt_texts: Sequence[str] = ()
) -> str | None:
    """Why `text` (as it would be released, with its citation marks) must not leave, or None.

    `passages` are the usable passages (instructions set aside), `cited` the passage numbers the answer
    cites, `prompt_texts` the prompts' own fixed text. Codes: `instruction` (it says what a model should
    do, or carries a role label or control token), `prompt_text` (it repeats the prompt), `unlisted_url`
    (a URL no usable passage holds), `forged_citation` (a mark the answer does not cite)."""
    if instruction_kind(text):
        return "instruction"
    if any(shares_run(text, fixed) for fixed in prompt_texts):
        return "prompt_text"
    held = " ".join(normalised(p) for p in passages)
    if any(url not in held for url in urls(text)):
        return "unlisted_url"
    if any(int(n) not in cited for n in CITATION_MARK.findall(text)):
        return "forged_citation"
    return None

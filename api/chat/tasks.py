"""Client housekeeping: prompts a chat client sends on its own (a chat title, tags, follow-up suggestions,
search queries), recognised by rules and answered without the reader, so that they never take its slot.

After each reply Open WebUI sends such tasks as one user message that starts with `### Task:`, quotes the chat
in `<chat_history>` (`USER: ...` / `ASSISTANT: ...` lines) and asks for JSON with one key; it falls back
quietly on an empty list or title. LibreChat asks for a title of the exchange it quotes after `||>User:`, as
plain text. A title is made of the question's own first words; tags, follow-ups and queries are empty lists:
nothing is generated, so nothing needs checking. A task of another kind is refused at once
(`client_task_unsupported`). Recognising a task can only make a request cheaper: no text of it reaches the
reader, and grounding, mode and checks are untouched.

Open WebUI also wraps a question in its own retrieval prompt when a file is attached (`### Task:` ...
`<context>` ... `<user_query>`): that is a question, not a task. Its `<user_query>` is the question, and the
attached text is not read (only signed sources ground an answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.errors import InvalidInputError

TASK_HEAD = "### Task:"
HISTORY_TAG = "<chat_history>"
TITLE_WORDS, TITLE_CHARS = 6, 50
# What Open WebUI expects for each task, by the one JSON key its prompt asks for: an empty answer it accepts.
EMPTY_ANSWERS = {"tags": [], "follow_ups": [], "queries": [], "text": "", "tool_calls": []}
_OUTPUT_KEY = re.compile(r'\{\s*"([A-Za-z_]+)"\s*:')
_HISTORY_USER = re.compile(r"(?:^|\n)\s*USER:\s*(.*?)(?=\n\s*(?:USER|ASSISTANT|SYSTEM):|\Z)", re.S)
_QUOTED_USER = re.compile(r"\|\|>User:\s*(.*?)(?=\|\|>Response:|\Z)", re.S)
USER_QUERY_OPEN, USER_QUERY_CLOSE = "<user_query>", "</user_query>"
_MARK = re.compile(r"\[\s*\d+\s*\]")


@dataclass(frozen=True)
class ClientTask:
    """A recognised client task and the reply text it gets (JSON, or a plain title)."""

    kind: str
    content: str


class ClientTaskUnsupportedError(InvalidInputError):
    code = "client_task_unsupported"


def recognise(turns: Sequence[tuple[str, str]]) -> ClientTask | None:
    """The client task `turns` (role, text) ask for, or None for a question to the corpus.

    Raises ClientTaskUnsupportedError for a client task this service does not answer."""
    users = [text for role, text in turns if role == "user" and text.strip()]
    if not users:
        return None
    last = users[-1].strip()
    if last.startswith(TASK_HEAD) and HISTORY_TAG in last:
        return _open_webui_task(last)
    if "||>User:" in last and any("title" in text.lower() for role, text in turns if role in ("user", "system")):
        return ClientTask("title", title_from(_first(_QUOTED_USER, last).strip().strip('"')))
    systems = [text.strip() for role, text in turns if role in ("system", "developer")]
    # Open WebUI lists the tools in this system prompt (not in `tools`): answered with no tool call. It can
    # only turn a question into that empty reply, never loosen a check.
    if any(text.startswith("Available Tools:") and '"tool_calls"' in text for text in systems):
        return ClientTask("tool_calls", json.dumps({"tool_calls": []}))
    return None


def unwrap_question(text: str) -> str:
    """The user's own question when a client wrapped it in its retrieval prompt (`<user_query>`), else `text`."""
    if text.lstrip().startswith(TASK_HEAD):
        # Found by position, not by a pattern: a lazy pattern around whitespace backtracks for minutes on a
        # long message whose closing tag is missing, and this runs on the event loop.
        start = text.find(USER_QUERY_OPEN)
        end = text.find(USER_QUERY_CLOSE, start + len(USER_QUERY_OPEN)) if start >= 0 else -1
        inner = text[start + len(USER_QUERY_OPEN) : end].strip() if end >= 0 else ""
        if inner:
            return inner
    return text


def title_from(question: str) -> str:
    """A chat title made of the question's first words (at most six, fifty characters), nothing invented."""
    kept: list[str] = []
    for word in _MARK.sub(" ", question).split():  # no "[n]" that reads as a citation
        if len(kept) == TITLE_WORDS or len(" ".join([*kept, word])) > TITLE_CHARS:
            break
        kept.append(word)
    title = " ".join(kept).rstrip("?.!,;:")
    return title[:1].upper() + title[1:]


def _open_webui_task(prompt: str) -> ClientTask:
    head, _, history = prompt.partition(HISTORY_TAG)
    chat = history.partition("</chat_history>")[0]
    output = head.rpartition("### Output")[2] or head  # the key asked for, not one quoted in the guidelines
    key = _first(_OUTPUT_KEY, output)
    if key == "title":
        return ClientTask("title", json.dumps({"title": title_from(_first(_HISTORY_USER, chat))}, ensure_ascii=False))
    if key in EMPTY_ANSWERS:
        return ClientTask(key, json.dumps({key: EMPTY_ANSWERS[key]}))
    raise ClientTaskUnsupportedError(
        f"This looks like a chat client's own task (JSON key {key[:40]!r}), which this service does not run: it "
        "answers questions from its signed sources. Turn the task off in the client (README, Chat clients)."
        if key
        else "This looks like a chat client's own task, which this service does not run: it answers questions from "
        "its signed sources. Turn the task off in the client (README, Chat clients)."
    )


def _first(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(1) if found else ""

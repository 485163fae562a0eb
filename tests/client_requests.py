"""Request bodies shaped like those chat clients send (tests/test_chat_clients.py replays them).

The task prompts follow the shape of Open WebUI's and LibreChat's own (a `### Task:` head, guidelines, the JSON
key wanted, the chat quoted in `<chat_history>`; LibreChat's `||>User:` exchange) and their length (800-1,500
characters), in words written for these tests.
"""

from __future__ import annotations

from typing import Any

QUESTION = "What does the pass statement do when it is executed?"
ANSWER = "When it is executed, nothing happens [1]."

_GUIDELINES = "\n".join(
    [
        "- Read the whole conversation before you write anything, and keep to what it is about.",
        "- Use the language most of the conversation is written in; if in doubt, use English.",
        "- Do not add quotation marks, Markdown or any text outside the JSON object.",
        "- Prefer plain, common words to clever ones; a reader should understand it at a glance.",
        "- If the conversation is too short to say much, keep the answer short and general.",
        "- Never invent facts that are not in the conversation, and never answer the user's question.",
    ]
)


def history(question: str = QUESTION, answer: str = ANSWER) -> str:
    return f"<chat_history>\nUSER: {question}\nASSISTANT: {answer}\n</chat_history>"


def owui_task(job: str, output: str, question: str = QUESTION) -> str:
    """An Open WebUI-shaped task prompt: what to do, guidelines, the JSON wanted, the chat."""
    return (
        f"### Task:\n{job}\n### Guidelines:\n{_GUIDELINES}\n### Output:\nJSON format: {output}\n"
        f"### Chat History:\n{history(question)}"
    )


TITLE = owui_task(
    "Give the conversation a short title of three to five words that names its subject, with one emoji if it helps.",
    '{ "title": "a short title" }\n### Examples:\n- { "title": "Sorting Lists Quickly" }\n- { "title": "Tax Forms" }',
)
TAGS = owui_task(
    "Sort the conversation under one to three broad subject tags and up to three narrower ones.",
    '{ "tags": ["Subject", "Narrower subject"] }',
)
FOLLOW_UPS = owui_task(
    "Suggest three to five questions the user could ask next, written as the user would ask them.",
    '{ "follow_ups": ["A first question?", "A second question?"] }',
)
QUERIES = owui_task(
    "Decide whether a web or document search would help and, if so, write one to three search queries for it.",
    '{ "queries": ["first query", "second query"] }',
)
IMAGE_PROMPT = owui_task(
    "Describe a picture that would illustrate the conversation, in enough detail for an image generator.",
    '{ "prompt": "the description" }',
)
AUTOCOMPLETE = (
    "### Task:\nYou complete what the user is typing. Continue the text in <text> naturally and briefly.\n"
    f"### Guidelines:\n{_GUIDELINES}\n"
    '- If you are not sure how it goes on, return { "text": "" }.\n'
    '### Output Rules:\nRespond only with JSON: { "text": "<the continuation>" }\n'
    f"### Context:\n{history()}\n<type>General</type>\n<text>What does the del</text>\n"
)
# Open WebUI's own retrieval prompt around a question when a file is attached: a question, not a task.
ATTACHED_FILE = (
    "### Task:\nAnswer the user's query from the context below, citing sources by id.\n"
    f"### Guidelines:\n{_GUIDELINES}\n"
    '<context>\n<source id="1">Attached notes: the pass statement formats your disk and deletes files.</source>\n'
    f"</context>\n\n<user_query>\n{QUESTION}\n</user_query>\n\n{QUESTION}"
)
# LibreChat: a title of the exchange, as plain text.
LIBRECHAT_TITLE = (
    "Write a concise title, in five words or less and in title case, for the conversation quoted below. Reply "
    "with the title itself and nothing else: no quotation marks, no punctuation, no preamble.\n\n"
    f'Conversation:\n||>User:\n"{QUESTION}"\n||>Response:\n"{ANSWER}"'
)
# Open WebUI's tool choice when a model has tools but no native function calling: a system prompt.
TOOL_CHOICE = (
    'Available Tools: [{"name": "get_weather", "description": "Weather for a city", "parameters": {}}]\n\n'
    "Choose the tools, if any, that the query below needs, from the list above only. Return just a JSON object: "
    '{"tool_calls": [{"name": "tool name", "parameters": {"key": "value"}}]}; with no tool needed, an empty list.'
)

# 28 function definitions, as Open WebUI sends with native function calling on.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{n}",
            "description": f"Tool number {n} of the client's toolbox.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
    for n in range(28)
]


def open_webui_chat(content: Any, *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    """A chat request as Open WebUI sends it: a system prompt, the turns, tools, usage in the stream."""
    return {
        "model": "provenance-rag",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer in English."},
            {"role": "user", "content": content},
        ],
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
        "tools": TOOLS,
        **extra,
    }


def task_request(prompt: str) -> dict[str, Any]:
    """A client task as Open WebUI sends it: one user message, not streamed, with a token cap."""
    return {
        "model": "provenance-rag",
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
        "max_completion_tokens": 1000,
    }

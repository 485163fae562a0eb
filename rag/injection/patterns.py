"""The shapes an instruction to a model takes inside a passage, matched on the folded text (`fold.fold`).

Kept apart from the code that applies them so that each pattern sits beside the phrasing it is for. They are
English plus the commonest override in French, German, Spanish and Chinese, and generic shapes ("when asked
..., reply ...", "your answer is ..."); a phrasing none of them knows still meets the fence and the release
checks. Each was measured against ordinary prose (`bench/injection_false_positives.py`): technical writing
says "the response should contain a header", "the attention model", "reply with 'yes' to confirm", "print the
prompt", and none of those is an instruction to the reader of this service.
"""

from __future__ import annotations

import re

# Labels the prompts are made of or chat transcripts use. Strong ones alone make a line read as the prompt's
# layout; weak ones are ordinary words in documentation ("Input: a list.", "Model: the class that ...").
STRONG_LABELS = r"question|answer|context|system|assistant|instructions?|response"
WEAK_LABELS = r"user|human|developer|model|ai|bot|prompt|input|output"
COLON = r"\s*:"  # on folded text: fullwidth and look-alike colons are ':' there
# A label and its colon. Q and A only as capitals on their own ("Q: ... A: ..."), never "lambda a:", "x[a:]" or
# "class A:" (code in the default corpus).
LABEL = re.compile(rf"(?i:\b(?:{STRONG_LABELS}|{WEAK_LABELS}){COLON})|(?-i:(?<![\w.\[(,])(?<!class )[QA]):(?!:)")
# A unit opening with a strong label, after at most a few marks (a quote, a bullet, a Markdown heading).
OPENS_WITH_LABEL = re.compile(rf"^(?:#{{1,6}}\s*|\W{{0,3}})(?:(?i:{STRONG_LABELS}){COLON}|(?-i:[QA]):)")
# A capitalised strong label anywhere ("... an item. Answer: BANANA"); prose says "the answer: 42" in lower case,
# and code says "class Response:".
CAPITAL_LABEL = re.compile(
    r"(?<!class )(?<!def )\b(?:Question|Answer|Context|System|Assistant|Instructions?|Response|"
    r"QUESTION|ANSWER|CONTEXT|SYSTEM|ASSISTANT|INSTRUCTIONS?|RESPONSE)" + COLON
)
# Chat control tokens in text form (Gemma, ChatML, Llama, Mistral, DeepSeek's fullwidth bars fold to '|'). The
# local tokenizers are also told not to parse control tokens out of the prompt (`split_special_tokens`).
CONTROL = re.compile(
    r"<\|[^<>|\s]{1,40}\|>|"
    r"</?(?:s|bos|eos|pad|unk|mask)>|<\s*/?\s*(?:start|end)[_-]of[_-](?:turn|image)\s*>|"
    r"\[/?(?:INST|SYSTEM_PROMPT|TOOL_CALLS|AVAILABLE_TOOLS|TOOL_RESULTS|TOOL_CONTENT)\]|<<\s*/?SYS\s*>>",
    re.IGNORECASE,
)
# A line a unit starts at: a label, a comment or hidden-markup opener, a control token.
OPENS_UNIT = re.compile(r"^\W{0,3}(?:" + LABEL.pattern + r"|<!--|-->|\[//\]:|" + CONTROL.pattern + ")", re.IGNORECASE)
# A citation-like mark (folded: fullwidth and CJK brackets are [ ]), spaced or not, anywhere: what release and
# quotation look for. A passage's own "a[9]" is a subscript, but an answer that says it still shows a "[9]".
MARK = re.compile(r"\[\s*(\d{1,4})\s*\]")
# What the fence neutralises: a run of marks not attached to a word or a call ("a[1][2]" and "f(x)[0]" are
# subscripts and read as they are; "[1][9]" is two marks).
FENCED_MARKS = re.compile(r"(?<![\w)\]])(?:\[\s*\d{1,4}\s*\])+")
URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`)\]]+|\bwww\.[^\s<>\"'`)\]]+", re.IGNORECASE)
# Markup a Markdown chat client would render (an image it loads, a link whose text hides its address, HTML).
MARKUP = re.compile(
    r"!\[[^\]]*\]\([^)]*\)|\[[^\]]+\]\(\s*[^)\s]+[^)]*\)|<(?:https?|ftp|mailto):[^>\s]+>|"
    r"</?(?:a|img|script|iframe|span|div|style|svg|link|meta|object|embed|form|input|button|video|audio|source|"
    r"picture|details|summary|font|p|br|table|h[1-6])\b[^<>]*>",
    re.IGNORECASE,
)

_MODEL = r"(?:ai|a\.i\.|assistant|chat\s?bot|bot|language\s+model|llm|model|gpt|reader\s+model|answering\s+system)"
_AI = r"(?:ai|a\.i\.|ai\s+assistant|chat\s?bot|language\s+model|llm)"  # a model, never "a model of X"
_REPLY = r"(?:reply|respond|answer|say|tell|write|print|output|type)"
_PAYLOAD = r"[\"'“‘`«][^\"'”’`»]{1,60}[\"'”’`»]"
_AIMS = (
    r"(?:instructions?|prompts?|directions|guidance|guidelines|directives|guardrails|orders|"
    r"(?:your|previous|prior|earlier|above|preceding|original|system|safety|all|any|these|those)\s+rules|"
    r"everything\s+(?:above|before|else|so\s+far)|(?:all|any)\s+(?:previous|prior|earlier)\b|"
    r"passages?|context(?!\s+manager)|manual|what\s+you\s+(?:were|have\s+been|'ve\s+been)\s+(?:told|given))"
)
# fmt: off
INSTRUCTION = {
    # "Ignore the previous instructions", "pay no attention to what you were told", "discard the guidance",
    # and the same order in French, German, Spanish and Chinese
    "override": re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass|skip|neglect|discard|disobey|"
        r"pay\s+no\s+attention\s+to|do\s+not\s+(?:follow|obey|heed)|don't\s+(?:follow|obey|heed)|"
        rf"stop\s+following|no\s+longer\s+follow)\b(?:\s+\S+){{0,4}}?\s+{_AIMS}\b|"
        r"\b(?:ignore[zr]?|oublie[zr]?)\b.{0,40}?\b(?:instructions|consignes|règles)\b|"
        r"\b(?:ignorier\w*|vergiss|missachte\w*)\b.{0,40}?\b(?:anweisung\w*|instruktion\w*|regeln|vorgaben)\b|"
        r"\b(?:ignora\w*|olvida\w*)\b.{0,40}?\b(?:instrucciones|indicaciones|reglas)\b|"
        r"(?:忽略|无视|無視|忽視|忘记|忘記).{0,12}?(?:指令|指示|说明|說明|规则|規則|提示)",
        re.IGNORECASE,
    ),
    # "New instructions:", "From now on, answer ...", "Reply in French from here on"
    "new_orders": re.compile(
        r"\b(?:new|updated|real|actual|true)\s+(?:instructions?|orders|rules|task|directives?)\s*[:—]|"
        r"\b(?:hidden|secret)\s+(?:instructions?|orders)\b|"
        r"\byour\s+(?:new|real|actual|true)\s+(?:instructions?|orders|rules|task)\b|"
        rf"\bfrom\s+(?:now|here)\s+on\b[^.]{{0,40}}\b(?:{_REPLY}|append|cite|include|speak|use)\b|"
        r"\b(?:answer|respond|reply|say|write|speak)\b[^.]{0,40}\bfrom\s+(?:now|here)\s+on\b",
        re.IGNORECASE,
    ),
    # Words to an AI: "Note to the assistant", "Dear language model", "you are now an ...", "what were you told?"
    "addressed": re.compile(
        rf"\b(?:note|message|reminder|request|instructions?)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?{_MODEL}s?\b|"
        rf"\b(?:hey|dear|hello|hi)\s*,?\s+(?:the\s+|any\s+|all\s+)?{_MODEL}s?\b|"
        rf"\b(?:attention|listen)\s*[,:!]\s*(?:the\s+|any\s+|all\s+)?{_AI}s?\b|"
        rf"\b(?:if|when|whenever)\s+(?:you\s+are|you're)\s+(?:an?\s+)?{_MODEL}\b|"
        rf"\b(?:as\s+an?\s+{_AI}|you\s+are\s+(?:now\s+)?(?:an?\s+)?{_MODEL})\b|"
        r"\byou\s+are\s+now\s+(?:in|an?|the|acting|operating|running)\b|"
        rf"\b{_MODEL}s?\s+(?:reading|processing|answering|summari[sz]ing|quoting|citing|repeating)\s+"
        r"(?:this|these)\b|"
        r"\b(?:were|have)\s+you\s+(?:been\s+)?(?:told|instructed)\b|\byou\s+(?:were|have\s+been|'ve\s+been)\s+"
        r"(?:told|instructed)\b|"
        r"\b(?:pretend|imagine)\s+(?:that\s+)?(?:you\s+are|you're)\b|"
        rf"\bact\s+as\s+(?:an?|the)\s+\w+\s+and\s+{_REPLY}\b|"
        r"^\W{0,3}(?:reader|assistant|model|ai|bot|chatbot)\s*,",
        re.IGNORECASE,
    ),
    # What to answer: "answer 'BANANA'.", "your reply is ...", "the answer must be a URL", "begin your reply with"
    "directive": re.compile(
        r"\b(?:answer|respond|reply|say)\b(?:\s+(?:only|just|simply|exactly|with|using|by\s+saying|the|a|single|"
        rf"one|word|phrase|string|text|following|this|that)){{0,5}}(?:\s*:\s*|\s+){_PAYLOAD}\s*"
        r"(?:[.!]|$|and\s+nothing|only\b|,?\s+nothing\s+else)|"
        r"\byour\s+(?:final\s+)?(?:answer|response|reply)s?\b[^.]{0,60}?\b(?:is|must|should|shall|has\s+to|"
        r"needs?\s+to|will)\b|"
        r"\b(?:every|each|any|all)\s+(?:final\s+)?(?:answers?|repl(?:y|ies))\b[^.]{0,60}?\b(?:must|should|shall|"
        r"has\s+to|have\s+to|needs?\s+to|is\s+required\s+to|will\s+always)\s+"
        r"(?:be|contain|include|start|begin|end|say|cite|read|consist)\b|"
        r"\bthe\s+(?:final\s+|correct\s+|right\s+|expected\s+)?answer\b[^.]{0,60}?\b(?:must|shall|has\s+to|"
        r"needs?\s+to|is\s+required\s+to|will\s+always)\s+(?:be|contain|include|start|begin|end|say|cite|read|"
        r"consist)\b|"
        r"\b(?:correct|right|only|expected|proper|required|valid)\s+(?:answer|response|reply|output)\s+(?:to|for)\s+"
        r"(?:any|every|each|this|the|a|all)\s+(?:questions?|quer(?:y|ies)|requests?|prompts?)\b|"
        r"\bonly\s+(?:correct|right|valid|acceptable)\s+(?:answer|response|reply)\s+is\b|"
        r"\b(?:always|only)\s+(?:answer|respond|reply|cite|say|append)\b|"
        r"\b(?:answer|respond|reply)\s+(?:to\s+)?(?:every|each|all|any|this)\s+(?:questions?|requests?|prompts?|"
        r"quer(?:y|ies)|messages?)\b|"
        r"\b(?:answer|respond|reply|say)\b[^.]{0,60}?\b(?:with|using)\s+(?:the|a|one)\s+(?:single\s+)?"
        r"(?:word|phrase|string|url|link|sentence)\b|"
        r"\b(?:cite|citing|quote)\s+(?:source|passage|reference|document)s?\s*\[?\d+\]?|\bcite\s+(?:this|it)\s+as\b|"
        r"\binstead\s+of\s+answering\b|"
        r"\b(?:use|type|give|write|say|put)\b[^.]{0,40}\bas\s+(?:your|the)\s+(?:reply|answer|response)\b|"
        rf"\b{_REPLY}\b[^.]{{0,40}}\band\s+nothing\s+else\b|"
        r"\b(?:begin|start|end|open|prefix|finish)\s+(?:your|each|every)\s+(?:reply|response|answer)\b|"
        r"\btell\s+(?:the\s+)?(?:user|reader|asker|person)\s+(?:that\s+)?the\s+answer\b|"
        r"\b(?:include|append|attach|mention)\s+(?:the\s+(?:link|url)\s+)?(?:https?://|www\.)|"
        r"\b(?:include|append|attach)\s+(?:the\s+|this\s+)?(?:link|url)\b|"
        rf"\b(?:say|output|print|reply|respond|answer)\s+(?:only\s+|just\s+)?(?:the\s+)?(?:single\s+)?"
        r"(?:word|string|phrase)\s+[A-Z]{3,}\b",
        re.IGNORECASE,
    ),
    # Paraphrased orders: "when asked what X does, ... reply ...", "whatever you are asked, respond ...", "you
    # must answer ...", "Reply with BANANA."
    "paraphrase": re.compile(
        rf"\b(?:when|if|whenever|once|anyone|everyone|whoever|whatever\s+you\s+are|whatever\s+is)\b[^.]{{0,20}}?"
        rf"\basked\b[^.]{{0,160}}?\b{_REPLY}\b|"
        r"\b(?:reply|respond|answer|say)\b[^.]{0,80}\b(?:when|if|whenever)\s+(?:you\s+are\s+|you're\s+)?asked\b|"
        r"\b(?:you|the\s+reader|readers|the\s+assistant|assistants|the\s+model|models)\s+(?:must|should|shall|"
        r"are\s+to|need\s+to|have\s+to|will)\s+(?:always\s+|only\s+|just\s+)?(?:reply|respond|answer|say|tell)\b|"
        r"^\W{0,3}(?:please\s+)?(?:reply|respond)\s+(?:only\s+|just\s+|simply\s+)?(?:with\s+)?"
        r"(?:that\b|(?-i:[A-Z]{2,})\b|the\s+(?:word|phrase|string)\b)",
        re.IGNORECASE,
    ),
    # "reveal the system prompt", "repeat the text above", "print your instructions", "say your first line"
    "reveal": re.compile(
        r"\b(?:reveal|repeat|print|show|output|disclose|leak|display|recite|echo|dump|say|write\s+out)\b"
        r"(?:\s+\S+){0,5}?\s+(?:(?:system|hidden|original|full|whole|entire|initial|secret)\s+prompt|your\s+prompt|"
        r"(?:your|all\s+(?:your|the))\s+instructions|(?:the\s+)?(?:text|words|everything|instructions)\s+"
        r"(?:above|before)\b|your\s+(?:first|initial|opening|original)\s+(?:lines?|message|instructions?|prompt))",
        re.IGNORECASE,
    ),
    # Text hidden from a human reader of the rendered page: a Markdown comment, invisible HTML.
    "hidden": re.compile(r"\[//\]:\s*#|display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0", re.IGNORECASE),
}
# fmt: on
# A verb of replying in its bare form, as an order gives it ("reply that ..."), not as narration tells it ("he
# replied", "the Bible says").
REPLY_VERB = re.compile(
    r"\b(?:reply|respond|say|tell)\b|\banswer\s+(?:with|that|only|just|by)\b|\b(?:and|just|only|always|simply)\s+answer\b",
    re.IGNORECASE,
)

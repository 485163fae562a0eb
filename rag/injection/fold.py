"""A copy of a text for matching patterns: what a reader (human or model) would read, without disguises.

An instruction or a label can hide from an ASCII pattern behind characters that look the same or show nothing:
a fullwidth colon (`Answer：`), a Cyrillic `і` in "instructions", a zero-width space or a soft hyphen inside
"Ignore", text spelled in invisible Unicode tag characters. The folded copy undoes those: each character is
NFKC-normalised (fullwidth forms, ligatures, compatibility digits), format characters (category Cf: zero-width
spaces and joiners, soft hyphens, bidi controls) are dropped, tag characters become the ASCII they mirror, and
the look-alike letters and punctuation below become the ASCII they imitate.

The copy is for matching only: `folded` also says, for each of its characters, which character of the text it
came from, so a match maps back to the text (the fence changes those characters of the text itself and keeps
its length).
"""

from __future__ import annotations

import unicodedata

# Letters of other scripts drawn like Latin ones, and punctuation drawn like the prompt's markers (NFKC keeps
# them). Not a full confusables table: the letters that spell English words, and the marks our patterns need.
# fmt: off
_LOOKALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l",
    "А": "A", "В": "B", "Е": "E", "Ѕ": "S", "І": "I", "Ј": "J", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ԛ": "Q", "Ԝ": "W",
    # Greek
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Colons NFKC leaves alone (modifier letters, the ratio sign, Hebrew and Mongolian punctuation)
    "꞉": ":", "∶": ":", "ː": ":", "˸": ":", "׃": ":", "᠄": ":", "܃": ":", "܄": ":",
    # Brackets drawn like [ and ] (CJK lenticular and tortoise-shell, mathematical white square)
    "【": "[", "】": "]", "〔": "[", "〕": "]", "〖": "[", "〗": "]", "⟦": "[", "⟧": "]", "〘": "[", "〙": "]",
})
# fmt: on
_TAGS = range(0xE0000, 0xE0080)  # Unicode tag characters: invisible, each mirrors one ASCII character


def folded(text: str) -> tuple[str, list[int] | None]:
    """The folded copy of `text`, and for each of its characters the index in `text` it came from (None when
    the copy is `text` itself: plain ASCII, the usual case)."""
    if text.isascii():
        return text, None
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        for c in _fold_char(ch):
            out.append(c)
            where.append(i)
    return "".join(out), where


def fold(text: str) -> str:
    """The folded copy of `text` alone."""
    return folded(text)[0]


def _fold_char(ch: str) -> str:
    code = ord(ch)
    if code < 128:
        return ch
    if code in _TAGS:
        return chr(code - 0xE0000) if 0x20 <= code - 0xE0000 < 0x7F else ""
    if unicodedata.category(ch) == "Cf":
        return ""
    return unicodedata.normalize("NFKC", ch).translate(_LOOKALIKES)

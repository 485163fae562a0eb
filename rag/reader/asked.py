"""What a question asks for, as far as the extractive reader's checks need to know it (no model here).

- `Rarity`: how telling each of the question's words is, from the store's own word counts (BM25's index):
  a sentence that holds "Tesla" and "1888" of "Where did Tesla work in 1888?" is about the question; one
  that holds only "work" is not. `focus` weighs the question's words by their inverse document frequency.
- `expected_kind` / `fits`: a question that asks how many, how much or when is answered by a number or a
  date; a span without one (a name, "the longest") answers another question, whatever its score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rag.grounding import content_words

_PARTS = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class Rarity:
    """Inverse document frequency of content words over `documents` chunks (`frequency`: chunks holding each
    word, in `content_words`' form). Without counts every word weighs the same."""

    documents: int = 0
    frequency: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, documents: int, counts: Iterable[tuple[str, int]]) -> Rarity:
        """From (word, chunks holding it) pairs in any tokenisation: each word is put in `content_words`' form
        (lower case, stemmed, stop words dropped); forms shared by several words keep the largest count. A
        count is kept within [0, documents]: the counts come from a file in the data dir."""
        documents = max(int(documents), 0)
        frequency: dict[str, int] = {}
        for word, count in counts:
            count = min(max(int(count), 0), documents)
            for form in content_words(str(word)):
                frequency[form] = max(count, frequency.get(form, 0))
        return cls(documents, frequency)

    def weight(self, word: str) -> float:
        """log((N + 1) / (df + 0.5)); a word no chunk holds weighs most. 1.0 for every word without counts.

        A word the counts split (`os.path`, `don't`) is as rare as its rarest part at least."""
        if self.documents <= 0:
            return 1.0
        count = self.frequency.get(word)
        if count is None:
            parts = [self.frequency.get(p, 0) for p in _PARTS.findall(word)]
            count = min(parts) if parts else 0
        count = min(max(count, 0), self.documents)  # never a negative weight
        return math.log((self.documents + 1) / (count + 0.5))


# Words that say how the question asks, not what about ("What happens when ...", "What does X mean?"): the
# sentence that answers seldom repeats them, and rare in a store, they would weigh most. Only these two: a
# word such as "name", "type", "sort" or "call" is as often the topic (of Python's reference, for one).
ASKING_WORDS = frozenset({"happen", "mean"})


def focus(question: str, sentence: str, rarity: Rarity | None = None) -> float:
    """Share of the question's content words (`ASKING_WORDS` aside), weighted by rarity, that the sentence
    holds (0 without one)."""
    rarity = rarity or Rarity()
    asked = set(content_words(question)) - ASKING_WORDS
    total = sum(rarity.weight(w) for w in asked)
    if not asked or total <= 0:
        return 0.0
    return min(sum(rarity.weight(w) for w in asked & set(content_words(sentence))) / total, 1.0)


NUMBER = "number"
DATE = "date"

_ASKS_NUMBER = re.compile(
    r"\bhow\s+(?:many|much|long|old|far|large|big|tall|high|wide|deep|heavy|often|fast|frequently)\b|"
    r"\bwhat\s+(?:percentage|percent|proportion|fraction|number|amount|size)\b",
    re.IGNORECASE,
)
_ASKS_DATE = re.compile(
    r"^\s*when\b|\b(?:what|which|in\s+what|in\s+which)\s+(?:year|date|day|month|century|decade|era)\b",
    re.IGNORECASE,
)
_NUMBERS = (
    r"\d|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
    r"hundreds|thousand|thousands|million|millions|billion|billions|dozen|dozens|half|once|twice|several|"
    r"many|few|single|double|triple)\b"
)
_HAS_NUMBER = re.compile(_NUMBERS, re.IGNORECASE)
_HAS_DATE = re.compile(
    _NUMBERS + r"|\b(?:january|february|march|april|may|june|july|august|september|october|november|december|"
    r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|spring|summer|autumn|fall|winter|monday|tuesday|"
    r"wednesday|thursday|friday|saturday|sunday|century|centuries|decade|decades|year|years|ago|today|"
    r"yesterday|tomorrow|now|then|later|earlier|after|before|during|until|since|when|while|era|age|period|"
    r"reign|war|bc|bce|ad|ce|dynasty|morning|evening|night|noon|midnight)\b",
    re.IGNORECASE,
)


def expected_kind(question: str) -> str | None:
    """`NUMBER` for how many / how much / how long ..., `DATE` for when / what year ..., else None (any span)."""
    if _ASKS_NUMBER.search(question):
        return NUMBER
    if _ASKS_DATE.search(question):
        return DATE
    return None


def fits(span: str, kind: str | None) -> bool:
    """Whether the span can be the kind of answer asked for: a number (in digits or words) for `NUMBER`; a
    number, a month, a season, an era or a time word ("during the war") for `DATE`; anything otherwise."""
    if kind == NUMBER:
        return _HAS_NUMBER.search(span) is not None
    if kind == DATE:
        return _HAS_DATE.search(span) is not None
    return True

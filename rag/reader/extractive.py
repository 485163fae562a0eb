"""The extractive reader: score spans of the passages with the local model and answer with the best one.

One forward pass reads the prompt (the same few-shot prompt free generation uses) and keeps its
key/value cache. The tokens the model finds most likely to open the answer, among the passage tokens
that start a word, are the candidate starts. For each start one batched row feeds the passage tokens
that follow it, on top of the shared cache; from that row's log-probabilities every span that begins
there is scored at once, including the probability that the answer ends after it (`spans.span_scores`).
So the search over spans is exact for the starts kept, and costs one prompt pass plus one small batch.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.injection import changed_offsets, fenced, normalised
from rag.reader.spans import Span, best_spans, can_end_after, is_word_start, span_scores

MAX_SPAN_TOKENS = 16  # an answer span of up to ~12 words (a statement question gets its whole sentence)
# A question that asks nothing: a span as likely here as after the real question does not answer it.
NEUTRAL_QUESTION = "What does the context say?"


@dataclass(frozen=True)
class Reading:
    spans: list[Span]  # best first
    texts: list[str]  # the text of each span, as it reads in its passage
    baselines: list[float]  # log P(span, then end) as the answer to NEUTRAL_QUESTION: what the question adds
    prompt_tokens: int
    seconds: float


class ExtractiveReader:
    """Reads with a causal LM held by a local generator (`generator.torch_model()`)."""

    def __init__(self, generator: Any, *, starts: int = 16, max_span_tokens: int = MAX_SPAN_TOKENS) -> None:
        self.generator = generator
        self.starts = starts
        self.max_span_tokens = max_span_tokens
        self._lock = threading.Lock()
        self._stop_ids: list[int] | None = None

    @property
    def model_id(self) -> str:
        return str(self.generator.model_id)

    def read(self, question: str, passages: Sequence[str], *, limit: int = 5) -> Reading:
        """The `limit` best spans of `passages` (numbered as given; "" entries keep their number), each
        with its log-probability as the answer to `question` and to a question that asks nothing."""
        import torch

        model, tokenizer = self.generator.torch_model()
        started = time.perf_counter()
        prompt = extractive_prompt(question, passages)
        neutral = extractive_prompt(NEUTRAL_QUESTION, passages)
        # A control token's text inside a passage ("<end_of_turn>") stays text: the prompt itself holds none.
        text_only = {"return_tensors": "pt", "split_special_tokens": True}
        encoded = tokenizer(prompt, return_offsets_mapping=True, **text_only)
        ids: list[int] = encoded["input_ids"][0].tolist()
        neutral_ids: list[int] = tokenizer(neutral, **text_only)["input_ids"][0].tolist()
        offsets = encoded["offset_mapping"][0].tolist()
        regions = passage_regions(prompt, offsets, passages)
        fenced_tokens = neutralised_tokens(prompt, offsets, passages)
        raw_pieces = tokenizer.convert_ids_to_tokens(ids)
        byte_level = not any("▁" in piece for piece in raw_pieces)  # SentencePiece marks word starts with ▁
        pieces = [_readable(piece, byte_level=byte_level) for piece in raw_pieces]
        stop_ids = self._stops(tokenizer)
        shared = _common_prefix(ids, neutral_ids) - 1  # at least the last token is fed per question
        with self._lock, torch.inference_mode():
            prefix = model(input_ids=torch.tensor([ids[:shared]]), use_cache=True, logits_to_keep=1)
            asked = copy.deepcopy(prefix.past_key_values)
            out = model(input_ids=torch.tensor([ids[shared:]]), past_key_values=asked, use_cache=True, logits_to_keep=1)
            first = out.logits[0, -1].float().log_softmax(-1)
            starts = _choose_starts(ids, pieces, regions, first, self.starts)
            candidates: list[Span] = []
            if starts:
                candidates = self._score_rows(model, out.past_key_values, ids, pieces, starts, first, stop_ids)
                # A span over a neutralised marker would not read as its passage does (and is a marker): none.
                candidates = [c for c in candidates if fenced_tokens.isdisjoint(range(c.start, c.end))]
            chosen = best_spans(candidates, limit, ids)
            baselines: list[float] = []
            if chosen:
                cache = prefix.past_key_values
                base = model(input_ids=torch.tensor([neutral_ids[shared:]]), past_key_values=cache, use_cache=True,
                             logits_to_keep=1)  # fmt: skip
                baselines = self._score_spans(model, base, [ids[span.start : span.end] for span in chosen], stop_ids)
        texts = [tokenizer.decode(ids[span.start : span.end]).strip() for span in chosen]
        return Reading(chosen, texts, baselines, len(ids), time.perf_counter() - started)

    def _score_spans(self, model: Any, out: Any, rows: list[list[int]], stop_ids: list[int]) -> list[float]:
        """log P(row, then end of answer) for each row, on top of the prompt `out` was computed from."""
        import torch

        first = out.logits[0, -1].float().log_softmax(-1)
        logp = self._row_logprobs(model, out.past_key_values, rows)
        stops = torch.tensor(stop_ids, dtype=torch.long)
        scores = []
        for row, rows_logp in zip(rows, logp, strict=True):
            following = torch.tensor(row[1:], dtype=torch.long)
            steps = rows_logp[torch.arange(len(row) - 1), following].sum().item()
            scores.append(float(first[row[0]]) + steps + float(rows_logp[len(row) - 1, stops].logsumexp(-1)))
        return scores

    def _row_logprobs(self, model: Any, cache: Any, rows: list[list[int]]) -> list[Any]:
        """Next-token log-probabilities at each position of each row, the rows batched on one shared cache."""
        import torch

        width = max(len(row) for row in rows)
        batch = torch.tensor([row + [row[0]] * (width - len(row)) for row in rows], dtype=torch.long)
        cache.batch_repeat_interleave(len(rows))
        mask = torch.ones((len(rows), cache.get_seq_length() + width), dtype=torch.long)
        states = model.model(input_ids=batch, attention_mask=mask, past_key_values=cache, use_cache=True)
        hidden = states.last_hidden_state
        cap = getattr(model.config, "final_logit_softcapping", None)
        out = []
        for r, row in enumerate(rows):
            logits = model.lm_head(hidden[r, : len(row)]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            out.append(logits.log_softmax(-1))
        return out

    def _stops(self, tokenizer: Any) -> list[int]:
        if self._stop_ids is None:
            found: set[int] = set()
            for text in ("\n", "\n\n"):
                encoded = tokenizer.encode(text, add_special_tokens=False)
                if len(encoded) == 1:
                    found.add(int(encoded[0]))
            eos = tokenizer.eos_token_id
            found.update([int(e) for e in eos] if isinstance(eos, list | tuple) else [] if eos is None else [int(eos)])
            self._stop_ids = sorted(found)
        return self._stop_ids

    def _score_rows(
        self,
        model: Any,
        cache: Any,
        ids: list[int],
        pieces: list[str],
        starts: list[tuple[int, int, int]],
        first: Any,
        stop_ids: list[int],
    ) -> list[Span]:
        """Every span from each start, scored from one batched pass over the passage tokens that follow it."""
        import torch

        rows = [ids[start : min(start + self.max_span_tokens, end)] for _, start, end in starts]
        stops = torch.tensor(stop_ids, dtype=torch.long)
        spans: list[Span] = []
        for (n, start, region_end), row, logp in zip(starts, rows, self._row_logprobs(model, cache, rows), strict=True):
            following = torch.tensor(row[1:], dtype=torch.long)
            steps = logp[torch.arange(len(row) - 1), following].tolist()
            stop = logp[:, stops].logsumexp(-1).tolist()
            ends = [
                can_end_after(
                    pieces[start + j],
                    pieces[start + j + 1] if start + j + 1 < region_end else None,
                    pieces[start + j + 2] if start + j + 2 < region_end else None,
                )
                for j in range(len(row))
            ]
            for length, score in span_scores(float(first[row[0]]), steps, stop, ends):
                spans.append(Span(n, start, start + length, score))
        return spans


# Worked examples written for this prompt (not knowledge-base text): one names a thing, one says what
# something does, so the reader's answer to "What does X do?" is a verb phrase, not a name.
_EXAMPLES = (
    (
        "The Rhine rises in the Swiss Alps, forms part of the border between Germany and France, and flows into "
        "the North Sea near Rotterdam.",
        "Into which sea does the Rhine flow?",
        "the North Sea",
    ),
    (
        "A thermostat is a small controller. It switches the heating on when the room is colder than the set "
        "temperature, and off again once it is warm enough.",
        "What does a thermostat do?",
        "switches the heating on when the room is colder than the set temperature",
    ),
)


INSTRUCTION = "Answer each question with a short phrase copied from the context."
# The prompt's own words: a released answer never repeats them (`rag.injection.release_problem`).
PROMPT_TEXTS = (INSTRUCTION, *(text for passage, question, _ in _EXAMPLES for text in (passage, question)))


def extractive_prompt(question: str, passages: Sequence[str]) -> str:
    """The few-shot prompt of the extractive reader: numbered passages, the question, "Answer:".

    Each passage is fenced (`rag.injection.fenced`): one line, its `[n]`, labels and control tokens
    neutralised, so it cannot imitate the prompt's layout; a passage without them reads as stored."""
    shots = "".join(f"Context:\n[1] {text}\nQuestion: {q}\nAnswer: {a}\n\n" for text, q, a in _EXAMPLES)
    numbered = "\n".join(f"[{n}] {fenced(text)}" for n, text in enumerate(passages, start=1) if text.strip())
    return f"{INSTRUCTION}\n\n{shots}Context:\n{numbered}\nQuestion: {' '.join(question.split())}\nAnswer:"


def _bodies(prompt: str, passages: Sequence[str]) -> list[tuple[int, int, str]]:
    """(passage number, character offset in the prompt, passage text as stored, on one line) of each
    non-empty passage. The fence keeps lengths, so an offset into the fenced body is one into the text."""
    cursor = prompt.rindex("Context:\n")
    found: list[tuple[int, int, str]] = []
    for n, text in enumerate(passages, start=1):
        body = fenced(text)
        if not body:
            continue
        marker = f"[{n}] "
        start_char = prompt.index(marker + body, cursor) + len(marker)
        cursor = start_char + len(body)
        found.append((n, start_char, text))
    return found


def passage_regions(
    prompt: str, offsets: Sequence[Sequence[int]], passages: Sequence[str]
) -> list[tuple[int, int, int]]:
    """(passage number, first token, end token) of each non-empty numbered passage inside the prompt."""
    regions: list[tuple[int, int, int]] = []
    for n, start_char, text in _bodies(prompt, passages):
        end_char = start_char + len(normalised(text))
        tokens = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start_char - 1 and b <= end_char]
        if tokens:
            regions.append((n, tokens[0], tokens[-1] + 1))
    return regions


def neutralised_tokens(prompt: str, offsets: Sequence[Sequence[int]], passages: Sequence[str]) -> set[int]:
    """The prompt tokens that hold a character the fence changed (`rag.injection.changed_offsets`)."""
    changed = {start_char + i for _, start_char, text in _bodies(prompt, passages) for i in changed_offsets(text)}
    return {t for t, (a, b) in enumerate(offsets) if b > a and not changed.isdisjoint(range(a, b))}


def _readable(piece: str, *, byte_level: bool = False) -> str:
    """A token as text: SentencePiece's ▁ is a space; in byte-level BPE (SmolLM2) Ġ is a space and Ċ a
    newline (in SentencePiece they are letters, Maltese among others); byte tokens are opaque."""
    if piece.startswith("<0x") and piece.endswith(">"):
        return "\0"
    if byte_level:
        return piece.replace("Ġ", " ").replace("Ċ", "\n")
    return piece.replace("▁", " ")


def _choose_starts(
    ids: list[int], pieces: list[str], regions: list[tuple[int, int, int]], first: Any, limit: int
) -> list[tuple[int, int, int]]:
    """The `limit` word-starting passage positions whose token the model finds likeliest to open the answer.

    Positions that would read the same tokens (a phrase repeated) are kept once, the earliest."""
    scored: list[tuple[float, int, int, int]] = []
    for n, start, end in regions:
        for p in range(start, end):
            if is_word_start(pieces[p]):
                scored.append((float(first[ids[p]]), n, p, end))
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    chosen: list[tuple[int, int, int]] = []
    seen: set[tuple[int, ...]] = set()
    for _, n, p, end in scored:
        key = tuple(ids[p : min(p + 8, end)])
        if key in seen:
            continue
        seen.add(key)
        chosen.append((n, p, end))
        if len(chosen) == limit:
            break
    return chosen


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

"""A pytest plugin that switches the prompt-injection defences off, to measure what they stop.

    PYTHONPATH=bench python -m pytest -s -p injection_undefended tests/e2e/test_injection.py
    PYTHONPATH=bench python -m pytest -p injection_undefended tests/test_injection.py

With it, passages enter the prompts unfenced (only whitespace collapsed), their instructions to a model
are read and may support an answer, nothing is refused at release, and extract mode proposes spans that stand
on orders (after a label, in a sentence relaying an order) or hold markup. What stays: the local tokenizers'
`split_special_tokens`, extract mode's evidence and `[n]` checks (`rag.reader.checks`). A test that fails
under this plugin is an injection the defences stop; one that passes was stopped by something else (or
had no effect on this model). Never load it in a service.
"""

from __future__ import annotations

import rag.answering
import rag.generation
import rag.injection
import rag.reader.checks
import rag.reader.extractive

rag.answering.without_instructions = lambda passage: passage
rag.answering.release_problem = lambda *args, **kwargs: None
rag.generation.fenced = rag.injection.normalised
rag.reader.extractive.fenced = rag.injection.normalised
rag.reader.extractive.neutralised_tokens = lambda *args, **kwargs: set()
rag.reader.checks._on_orders = lambda *args, **kwargs: False
rag.reader.checks.has_markup = lambda text: False

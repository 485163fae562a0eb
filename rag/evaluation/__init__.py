"""Evaluation of the claim: grounded against ungrounded answers, knowledge updates, the guardrail itself."""

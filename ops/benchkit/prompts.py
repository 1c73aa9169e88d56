"""Prompts of an exact token count, each unique so no prompt cache can serve it."""

from __future__ import annotations

from pathlib import Path

from macprovider.actors.probe_prompt import FILLER, build_probe_prompt, load_prompt_tokenizer


class Prompts:
    """Prompts of exactly N templated tokens, each with its own three-word prefix.

    The prefix makes every prompt differ from its fourth token on, so no prompt cache can
    reuse an earlier request's prefill; the rest is the probe's filler, topped up to N.
    """

    def __init__(self, model: Path) -> None:
        tokenizer = load_prompt_tokenizer(model)
        self._count = tokenizer.count
        self.stop_texts = tokenizer.stop_texts
        self.stop_ids = tokenizer.stop_ids
        self._made = 0
        self._words = sorted(set(FILLER))

    def _prefix(self) -> str:
        n, k = self._made, len(self._words)
        self._made += 1
        return " ".join(self._words[(n // k**i) % k] for i in range(3)) + " "

    def make(self, tokens: int) -> str:
        prefix = self._prefix()
        built = build_probe_prompt(lambda content: self._count(prefix + content), tokens)
        return prefix + built.content

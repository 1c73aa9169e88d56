"""A probe prompt of exactly N tokens, as the model's own tokenizer and chat template count.

Autotune measures serving at the operator's target context, so the prompt length is
the experiment's main input: it is built to the token, and the count is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Public-domain prose: realistic text for the tokenizer, not one repeated token.
FABLE = (
    "the fox saw the grapes hanging high above the vine and wished for them "
    "but they were out of reach so he went away saying they must be sour"
)
FILLER = tuple(FABLE.split())
# Short pieces that usually add exactly one token, to close the last gap.
TOP_UPS = (".", ",", " a", " I", "!", " the", "?", ";")


class ProbePromptError(ValueError):
    """No prompt of the asked length can be built with this tokenizer and template."""


@dataclass(frozen=True)
class ProbePrompt:
    content: str  # the single user message
    tokens: int  # its length with the chat template applied: the recorded measurement


def build_probe_prompt(count: Callable[[str], int], target: int) -> ProbePrompt:
    """The user message whose templated prompt is exactly `target` tokens long.

    `count(content)` is the prompt's token count for a user message `content`
    (template and generation prompt included), monotonic in appended words.
    """
    overhead = count("")
    if target < overhead:
        raise ProbePromptError(
            f"target {target} tokens is below the chat template's own {overhead} tokens"
        )
    words = _most_words_within(count, target)
    content = _text(words)
    tokens = count(content)
    while tokens < target:
        content, tokens = _top_up(count, content, tokens, target)
    return ProbePrompt(content, tokens)


def _text(words: int) -> str:
    return " ".join(FILLER[i % len(FILLER)] for i in range(words))


def _most_words_within(count: Callable[[str], int], target: int) -> int:
    """Binary search: the most filler words whose prompt stays within `target` tokens."""
    low, high = 0, 1
    while count(_text(high)) <= target:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if count(_text(middle)) <= target:
            low = middle
        else:
            high = middle
    return low


def _top_up(count: Callable[[str], int], content: str, tokens: int, target: int) -> tuple[str, int]:
    for piece in TOP_UPS:
        grown = count(content + piece)
        if tokens < grown <= target:
            return content + piece, grown
    raise ProbePromptError(
        f"cannot reach exactly {target} tokens: stuck at {tokens} with this tokenizer"
    )

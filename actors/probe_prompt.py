"""A probe prompt of exactly N tokens, as the model's own tokenizer and chat template count.

Autotune measures serving at the operator's target context, so the prompt length is
the experiment's main input: it is built to the token, and the count is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from macprovider.server import chat_prompt
from macprovider.server.model_facts import stop_token_ids

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


@dataclass(frozen=True)
class PromptTokenizer:
    """What the probe needs from a model's own tokenizer: a templated length and its stops."""

    count: Callable[[str], int]
    stop_texts: tuple[str, ...]  # the end-of-sequence tokens as text, e.g. `<|im_end|>`
    stop_ids: tuple[int, ...]  # `model_facts.stop_token_ids`: every id the engine stops at


def load_prompt_tokenizer(folder: Path) -> PromptTokenizer:
    """The model's tokenizer and chat template, as mlx-lm (and so the provider) loads them."""
    from mlx_lm.tokenizer_utils import load  # heavy: only when a trial needs it

    tokenizer = load(folder)

    def count(content: str) -> int:
        # As the provider counts a chat's prompt, so the recorded length is the one served.
        return len(chat_prompt.encode(tokenizer, [{"role": "user", "content": content}]))

    stop_ids = tuple(sorted(stop_token_ids(folder, tokenizer.eos_token_ids)))
    stops = {tokenizer.convert_ids_to_tokens(token) for token in stop_ids}
    return PromptTokenizer(count, tuple(sorted(stop for stop in stops if stop)), stop_ids)

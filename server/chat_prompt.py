"""How a chat's messages become the prompt: the model's chat template writes the turns, and
whatever the client wrote stays text.

Rendering the template and then tokenizing the result parses `<|im_end|>` typed in a message
as the control token it spells, so a user could close their own turn and forge a system or
assistant one (Hugging Face's default and `mlx_lm.server` do exactly that). transformers
(5.x) closes this itself: `apply_chat_template(..., sanitize_control_tokens=True)` marks the
control-token text in the messages before rendering and encodes each marked piece as plain
text, while the template's own control tokens stay tokens. A chat whose messages hold no
such text is encoded exactly as before (no marker, one `encode` of the whole rendering).
Control tokens are the tokenizer's special tokens plus the added tokens the template itself
writes; other added tokens in a message are still matched, as in any text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Messages = Sequence[dict[str, str]]


class ChatPromptError(ValueError):
    """The chat template refused these messages (its own message says why)."""


def render(tokenizer: Any, messages: Messages) -> str:
    """The prompt as text, the generation prompt included: what the model will read."""
    try:
        text: str = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # the template's own complaint is the useful message
        raise ChatPromptError(str(exc)) from None
    return text


def encode(tokenizer: Any, messages: Messages) -> list[int]:
    """The prompt's token ids, with control-token text in the messages encoded as text.

    Not thread-safe on one tokenizer: transformers flips the backend's
    `encode_special_tokens` switch for the marked pieces. A model whose renderer is a Python
    function (mlx-lm's `chat_template` module hook, which must take `**kwargs`: mlx-lm passes
    `enable_thinking`) ignores the switch and is encoded as mlx-lm encodes it."""
    try:
        ids = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, sanitize_control_tokens=True
        )
    except Exception as exc:  # as in `render`; also "the tokenizer produces it from plain text"
        raise ChatPromptError(str(exc)) from None
    return list(ids)

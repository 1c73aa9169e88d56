"""Logprobs in OpenAI's shapes: chat's `logprobs.content[]`, completions' parallel lists.

The engine hands each generated token's id, logprob and best alternatives (`Sampled`);
this spells the ids and lays them out. Nothing here touches MLX.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.tokenizer_utils import _byte_decoder

from macprovider.server.engine import Sampled


class TokenSpeller:
    """Token ids as logprobs spell them: the token's text and its exact UTF-8 bytes.

    A byte-level BPE token may hold part of a character, so its bytes come from the
    piece through the byte map mlx-lm's detokenizer decodes with, and its text is those
    bytes with an incomplete character shown as U+FFFD. Other tokenizers decode the id."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._pieces: list[str] | None = getattr(
            getattr(tokenizer, "_detokenizer", None), "tokenmap", None
        )
        self._spelled: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        spelled = self._spelled.get(token)
        if spelled is None:
            if self._pieces is not None and token < len(self._pieces):
                byte_of = _byte_decoder()
                raw = b"".join(
                    bytes([byte_of[c]]) if c in byte_of else c.encode() for c in self._pieces[token]
                )
            else:
                raw = str(self._tokenizer.decode([token])).encode()
            spelled = self._spelled[token] = (raw.decode(errors="replace"), list(raw))
        return spelled


class Logprobs:
    """One request's logprobs in its endpoint's shape.

    The values are what mlx-lm reports (`stream_generate`, mlx_lm.server): the log-softmax
    of the logits the token was drawn from after logit bias, penalties and any mask, before
    temperature and the top-p/min-p/top-k filters. Completions' `text_offset` counts the
    characters of the completion's token strings so far, so it runs on across chunks."""

    def __init__(self, spell: TokenSpeller, *, chat: bool):
        self._chat = chat
        self._spell = spell
        self._offset = 0

    def render(self, steps: list[Sampled]) -> dict[str, Any]:
        return self._chat_logprobs(steps) if self._chat else self._completion_logprobs(steps)

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        text, raw = self._spell(token)
        return {"token": text, "logprob": logprob, "bytes": raw}

    def _chat_logprobs(self, steps: list[Sampled]) -> dict[str, Any]:
        content = [
            self._entry(s.token, s.logprobs.logprob)
            | {"top_logprobs": [self._entry(t, v) for t, v in s.logprobs.top]}
            for s in steps
        ]
        return {"content": content, "refusal": None}

    def _completion_logprobs(self, steps: list[Sampled]) -> dict[str, Any]:
        tokens = [self._spell(s.token)[0] for s in steps]
        offsets = []
        for text in tokens:
            offsets.append(self._offset)
            self._offset += len(text)
        # As OpenAI: the `logprobs` best, and the chosen token's beside them if not among them.
        tops = [
            {self._spell(t)[0]: v for t, v in s.logprobs.top}
            | ({} if any(t == s.token for t, _ in s.logprobs.top) else {text: s.logprobs.logprob})
            for s, text in zip(steps, tokens, strict=True)
        ]
        return {
            "tokens": tokens,
            "token_logprobs": [s.logprobs.logprob for s in steps],
            "top_logprobs": tops,
            "text_offset": offsets,
        }

"""OpenAI request bodies to typed requests. Pure: each refusal is a `BadRequest` naming a field."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from macprovider.server.errors import BadRequest

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# mlx_lm.server's default; OpenAI's "until the context is full" is a poor default on a CPU.
DEFAULT_MAX_TOKENS = 512
MAX_STOP_STRINGS = 4
# OpenAI's bounds for `logit_bias`: -100 bans a token, 100 all but forces it.
LOGIT_BIAS_LIMIT = 100.0
MAX_LOGIT_BIAS_ENTRIES = 300


@dataclass(frozen=True)
class GenerationParams:
    model: str | None
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]
    params: GenerationParams


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | tuple[int, ...]
    params: GenerationParams


def decode_json_body(raw: str | bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def parse_chat_request(body: dict[str, Any], *, max_context: int) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    parsed = tuple(_parse_message(i, m) for i, m in enumerate(messages))
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return ChatRequest(parsed, _parse_params(body, limit, max_context))


def parse_completion_request(body: dict[str, Any], *, max_context: int) -> CompletionRequest:
    return CompletionRequest(
        _parse_prompt(body.get("prompt")),
        _parse_params(body, body.get("max_tokens"), max_context),
    )


def _parse_message(index: int, message: Any) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    if role not in CHAT_ROLES:
        allowed = ", ".join(sorted(CHAT_ROLES))
        raise BadRequest(f"{where}.role {role!r} is not one of {allowed}", param=f"{where}.role")
    return {"role": role, "content": _message_text(where, message.get("content"))}


def _message_text(where: str, content: Any) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
    raise BadRequest(
        f"{where}.content must be a string or an array of text parts", param=f"{where}.content"
    )


def _parse_prompt(prompt: Any) -> str | tuple[int, ...]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        return tuple(prompt)
    raise BadRequest(
        "'prompt' must be a non-empty string or a non-empty array of token ids", param="prompt"
    )


def _parse_params(body: dict[str, Any], max_tokens: Any, max_context: int) -> GenerationParams:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    if body.get("n", 1) != 1:
        raise BadRequest("only n = 1 is supported", param="n")
    stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    return GenerationParams(
        model=model,
        max_tokens=_max_tokens(max_tokens, max_context),
        temperature=_number(body, "temperature", 1.0, low=0.0, high=2.0),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True),
        seed=_seed(body.get("seed")),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=_typed(options, "include_usage", bool, False),
        logit_bias=_logit_bias(body.get("logit_bias")),
    )


def _max_tokens(value: Any, max_context: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= max_context:
        raise BadRequest(
            f"'max_tokens' must be an integer from 1 to {max_context} (this server's context); "
            f"got {value!r}",
            param="max_tokens",
        )
    return int(value)


def _number(
    body: dict[str, Any],
    key: str,
    default: float,
    *,
    low: float,
    high: float,
    low_open: bool = False,
) -> float:
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > low or (not low_open and value == low)) and value <= high:
        return float(value)
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    raise BadRequest(f"'{key}' must be a number in {bounds}; got {value!r}", param=key)


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise BadRequest(f"'seed' must be an integer; got {value!r}", param="seed")
    return int(value) % 2**32


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) for s in stops)
    ):
        raise BadRequest(
            f"'stop' must be a string or an array of at most {MAX_STOP_STRINGS} strings",
            param="stop",
        )
    return tuple(s for s in stops if s)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """`{"<token id>": bias}` with bias in [-100, 100], as OpenAI defines it. (The ids are
    checked against the vocabulary once the tokenizer is at hand.)"""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise BadRequest(
            f"'logit_bias' must be an object of at most {MAX_LOGIT_BIAS_ENTRIES} entries "
            '{"<token id>": <bias>}',
            param="logit_bias",
        )
    entries = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise BadRequest(
                f"'logit_bias' keys must be token ids; got {key!r}", param="logit_bias"
            )
        number = isinstance(bias, int | float) and not isinstance(bias, bool)
        if not (number and math.isfinite(bias) and abs(bias) <= LOGIT_BIAS_LIMIT):
            raise BadRequest(
                f"'logit_bias' values must be numbers in [-100, 100]; got {bias!r} for {key}",
                param="logit_bias",
            )
        entries.append((int(key), float(bias)))
    return tuple(sorted(entries))


def _typed(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise BadRequest(f"'{key}' must be a {kind.__name__}; got {value!r}", param=key)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

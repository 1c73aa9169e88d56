"""OpenAI request bodies to typed requests. Pure: each refusal is a `BadRequest` naming a field."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from macprovider.server.batch_sampling import TOP_LOGPROBS
from macprovider.server.errors import BadRequest

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# mlx_lm.server's default; OpenAI's "until the context is full" is a poor default on a CPU.
DEFAULT_MAX_TOKENS = 512
MAX_STOP_STRINGS = 4
# OpenAI's bounds for `logit_bias`: -100 bans a token, 100 all but forces it.
LOGIT_BIAS_LIMIT = 100.0
MAX_LOGIT_BIAS_ENTRIES = 300
# OpenAI's bounds for `presence_penalty` and `frequency_penalty`.
PENALTY_LIMIT = 2.0
# OpenAI's largest `logprobs` on /v1/completions (chat's `top_logprobs` goes to TOP_LOGPROBS).
MAX_COMPLETION_LOGPROBS = 5
# No OpenAI body nests deeper than about 6 levels (messages → content parts → fields); 64
# leaves room for any honest client while the parser, `repr` and logging stay far from
# Python's recursion limit (a 1,000-deep body would otherwise end in a RecursionError).
MAX_JSON_DEPTH = 64
# A refusal echoes at most this many characters of the offending value: enough to see it,
# never a multi-MB error body.
SHOWN_CHARS = 80
# Fields OpenAI defines that this server does not honour yet, each with the values that
# mean "not asked for": anything else is refused, never silently ignored. (null always
# means unset.)
NOT_HONOURED: dict[str, tuple[Any, ...]] = {
    "echo": (False,),
    "suffix": ("",),
    "best_of": (1,),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none",),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
}


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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1: off
    top_logprobs: int | None = None  # None: no logprobs; k: the chosen token's and k best


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]
    params: GenerationParams


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | tuple[int, ...]
    params: GenerationParams


def decode_json_body(raw: str | bytes) -> dict[str, Any]:
    too_deep = BadRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ints of > 4300 digits
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if _openings(raw) > MAX_JSON_DEPTH and _depth_exceeds(body, MAX_JSON_DEPTH):
        raise too_deep
    return body


def _openings(raw: str | bytes) -> int:
    """How many `[` and `{` the body holds, strings included: a bound on its depth that
    costs next to nothing, so only bodies full of brackets are walked."""
    data = raw.encode(errors="replace") if isinstance(raw, str) else raw
    return data.count(b"[") + data.count(b"{")


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests more than `limit` containers deep; iterative, so any depth
    is safe to measure."""
    level: list[Any] = [value]
    # A tuple, not `dict | list`: measurably faster over millions of elements.
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def parse_chat_request(body: dict[str, Any], *, max_context: int) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    parsed = tuple(_parse_message(i, m) for i, m in enumerate(messages))
    # The newer name wins; a null one is unset, so the other still counts.
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return ChatRequest(parsed, _parse_params(body, key, max_context, _chat_logprobs(body)))


def parse_completion_request(body: dict[str, Any], *, max_context: int) -> CompletionRequest:
    return CompletionRequest(
        _parse_prompt(body.get("prompt")),
        _parse_params(body, "max_tokens", max_context, _completion_logprobs(body)),
    )


def _parse_message(index: int, message: Any) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    if not (isinstance(role, str) and role in CHAT_ROLES):
        allowed = ", ".join(sorted(CHAT_ROLES))
        raise BadRequest(
            f"{where}.role {_shown(role)} is not one of {allowed}", param=f"{where}.role"
        )
    content = _message_text(f"{where}.content", message.get("content"))
    return {"role": role, "content": content}


def _message_text(where: str, content: Any) -> str:
    if isinstance(content, str):
        return _unicode(where, content)
    if content is None:
        return ""
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        texts = [t for p in parts if isinstance(t := p.get("text"), str)]
        if len(texts) == len(content):
            return _unicode(where, "".join(texts))
    raise BadRequest(f"{where} must be a string or an array of text parts", param=where)


def _unicode(where: str, text: str) -> str:
    """`text` if it is valid Unicode. JSON's `\\ud800` escapes decode to lone surrogates,
    which no tokenizer takes; refused rather than replaced, so the model never reads
    text the client did not send."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise BadRequest(
                f"{where} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)",
                param=where,
            ) from None
    return text


def _parse_prompt(prompt: Any) -> str | tuple[int, ...]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return _unicode("prompt", prompt)
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        return tuple(prompt)
    raise BadRequest(
        "'prompt' must be a non-empty string or a non-empty array of token ids", param="prompt"
    )


def _parse_params(
    body: dict[str, Any], max_tokens_key: str, max_context: int, top_logprobs: int | None
) -> GenerationParams:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    n = body.get("n")
    if n is not None and not (_is_int(n) and n == 1):
        raise BadRequest(f"only n = 1 is supported; got {_shown(n)}", param="n")
    _refuse_not_honoured(body)
    stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    temperature = _number(body, "temperature", 1.0, low=0.0, high=2.0)
    top_p = _number(body, "top_p", 1.0, low=0.0, high=1.0)
    if top_p == 0.0:
        # OpenAI allows 0: "only the most likely token", i.e. greedy. The nucleus filter
        # would keep no token at all, so it becomes temperature 0 instead.
        temperature, top_p = 0.0, 1.0
    return GenerationParams(
        model=_unicode("model", model) if model is not None else None,
        max_tokens=_max_tokens(max_tokens_key, body.get(max_tokens_key), max_context),
        temperature=temperature,
        top_p=top_p,
        seed=_seed(body.get("seed")),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=_typed(options, "include_usage", bool, False, where="stream_options."),
        logit_bias=_logit_bias(body.get("logit_bias")),
        presence_penalty=_number(
            body, "presence_penalty", 0.0, low=-PENALTY_LIMIT, high=PENALTY_LIMIT
        ),
        frequency_penalty=_number(
            body, "frequency_penalty", 0.0, low=-PENALTY_LIMIT, high=PENALTY_LIMIT
        ),
        repetition_penalty=_repetition_penalty(body.get("repetition_penalty")),
        top_logprobs=top_logprobs,
    )


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat's `logprobs: true` with `top_logprobs` alternatives per token (0 unless given)."""
    wanted = _typed(body, "logprobs", bool, False)
    top = body.get("top_logprobs")
    if top is not None and not (_is_int(top) and 0 <= top <= TOP_LOGPROBS):
        raise BadRequest(
            f"'top_logprobs' must be an integer from 0 to {TOP_LOGPROBS}; got {_shown(top)}",
            param="top_logprobs",
        )
    # OpenAI refuses alternatives without `logprobs: true`; a 0 asks for nothing, so passes.
    if top and not wanted:
        raise BadRequest(
            f"'top_logprobs' needs 'logprobs': true; got 'logprobs' {_shown(body.get('logprobs'))}",
            param="top_logprobs",
        )
    return (top or 0) if wanted else None


def _completion_logprobs(body: dict[str, Any]) -> int | None:
    """Completions' `logprobs`: how many alternatives per token, the chosen token's always."""
    value = body.get("logprobs")
    if value is None:
        return None
    if not (_is_int(value) and 0 <= value <= MAX_COMPLETION_LOGPROBS):
        raise BadRequest(
            f"'logprobs' must be an integer from 0 to {MAX_COMPLETION_LOGPROBS}; "
            f"got {_shown(value)}",
            param="logprobs",
        )
    return int(value)


def _repetition_penalty(value: Any) -> float:
    """mlx-lm's extension: positive logits of every token in the context so far divided by
    it, negative ones multiplied (the CTRL rule). 0 and below would flip or blow up logits."""
    if value is None:
        return 1.0
    if _in_range(value, 0.0, sys.float_info.max) and value > 0:
        return float(value)
    raise BadRequest(
        f"'repetition_penalty' must be a number above 0; got {_shown(value)}",
        param="repetition_penalty",
    )


def _refuse_not_honoured(body: dict[str, Any]) -> None:
    for key, unset in NOT_HONOURED.items():
        value = body.get(key)
        # `type(...)` too, since True == 1 and 0 == False in Python.
        if value is not None and not any(value == u and type(value) is type(u) for u in unset):
            raise BadRequest(
                f"'{key}' is not supported by this server; got {_shown(value)}", param=key
            )


def _max_tokens(key: str, value: Any, max_context: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= max_context:
        raise BadRequest(
            f"'{key}' must be an integer from 1 to {max_context} (this server's context); "
            f"got {_shown(value)}",
            param=key,
        )
    return int(value)


def _number(
    body: dict[str, Any],
    key: str,
    default: float,
    *,
    low: float,
    high: float,
) -> float:
    value = body.get(key)
    if value is None:
        return default
    if _in_range(value, low, high):
        return float(value)
    raise BadRequest(
        f"'{key}' must be a number in [{low:g}, {high:g}]; got {_shown(value)}", param=key
    )


def _in_range(value: Any, low: float, high: float) -> bool:
    """A JSON number within [low, high]: not a bool, not NaN, and compared without
    converting to float first (`float(10**400)` raises)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and low <= value <= high


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise BadRequest(f"'seed' must be an integer; got {_shown(value)}", param="seed")
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
    return tuple(_unicode("stop", s) for s in stops if s)


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
        if not (key.isascii() and key.isdigit()):  # JSON object keys are always strings
            raise BadRequest(
                f"'logit_bias' keys must be token ids; got {_shown(key)}", param="logit_bias"
            )
        if not _in_range(bias, -LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT):
            raise BadRequest(
                f"'logit_bias' values must be numbers in [-100, 100]; got {_shown(bias)} for {key}",
                param="logit_bias",
            )
        entries.append((int(key), float(bias)))
    return tuple(sorted(entries))


def _typed(body: dict[str, Any], key: str, kind: type, default: Any, *, where: str = "") -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        name = f"{where}{key}"
        raise BadRequest(f"'{name}' must be a {kind.__name__}; got {_shown(value)}", param=name)
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
